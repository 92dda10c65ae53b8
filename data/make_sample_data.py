"""Generate the shipped sample data (deterministic; rerun to rebuild every file below byte for byte).

    python data/make_sample_data.py

Writes, in the seed's ``{"instruction", "output"}`` format with R1-style outputs (``<think>...</think>`` then the answer):
  data/sample/train.jsonl    the fine-tuning task: say what a sentence is about (animals, colors, countries, numbers)
  data/sample/test.jsonl     held-out rows (no word pair of the test appears in train)
  data/sample/general.jsonl  general knowledge Q&A, for replay mixing and the forgetting check
  data/sample/broken.jsonl   deliberately broken rows (bad JSON, missing fields, empty output, wrong types)
  data/sample/preference_train.jsonl, preference_test.jsonl
                             preference pairs of the task (``{"prompt", "chosen", "rejected"}``): chosen is the row's
                             right answer, rejected the same answer for another topic (train: the first 400 rows)
  data/corpus/general.txt    a small general-English corpus for pre-training the embedded tiny model

The task is one a 4-layer model can visibly learn in a minute on a CPU: it must notice which kind of word the prompt
talks about and name that topic after its reasoning, for word pairs it never saw in training. Prompts mention people by gendered words more often for
one group than the other, on purpose, so the debiasing stage has an imbalance to measure and correct; a few rows carry
a blocklisted insult so the blocklist filter has something to catch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SEED = 20250120

SUBJECTS = (
    # (phrase, group) — male-heavy on purpose; "neutral" rows carry no gendered term.
    [
        ("He", "male"),
        ("My brother", "male"),
        ("The boy", "male"),
        ("His father", "male"),
        ("The man", "male"),
        ("He", "male"),
        ("Her uncle", "male"),
        ("The king", "male"),
    ]
    + [("She", "female"), ("My sister", "female")]
    + [("The teacher", "neutral"), ("A student", "neutral"), ("Someone", "neutral")]
)
VERBS = ["has", "bought", "found", "painted", "was given", "lost"]
TOPICS = {
    "animals": ["dog", "cat", "cow", "duck", "lion", "sheep", "horse", "bird", "snake", "owl"],
    "colors": ["red", "blue", "green", "yellow", "black", "white", "orange", "pink"],
    "countries": ["France", "Germany", "Italy", "Spain", "Japan", "China", "Egypt", "Canada", "Peru", "Norway"],
    "numbers": ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"],
}
TOPIC_SENTENCES = [
    "{subject} {verb} about the {a} and the {b} at {place}.",
    "{subject} {verb} a story with {a} and {b} in it.",
    "At {place}, {subject_lower} {verb} about {a} and later about {b}.",
]
TOPIC_VERBS = ["talked", "wrote", "read", "asked", "thought"]
TOPIC_PLACES = ["the park", "the market", "the school", "the library", "the station"]
TOPIC_QUESTION = "What is the sentence about?"
INSULTS = ["The idiot", "That moron"]  # in data/debias/blocklist.txt

CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Russia", "Moscow"),
    ("Greece", "Athens"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"),
    ("India", "New Delhi"),
]
OPPOSITES = [
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("up", "down"),
    ("day", "night"),
    ("old", "new"),
    ("happy", "sad"),
    ("light", "dark"),
    ("open", "closed"),
    ("early", "late"),
    ("full", "empty"),
    ("soft", "hard"),
]
COLORS = [
    ("the sky on a clear day", "blue"),
    ("fresh grass", "green"),
    ("snow", "white"),
    ("a ripe banana", "yellow"),
    ("coal", "black"),
    ("a ripe tomato", "red"),
    ("an orange", "orange"),
    ("a lemon", "yellow"),
]
ANIMALS = [
    ("dog", "barks"),
    ("cat", "meows"),
    ("cow", "moos"),
    ("duck", "quacks"),
    ("lion", "roars"),
    ("sheep", "bleats"),
    ("horse", "neighs"),
    ("bird", "sings"),
    ("snake", "hisses"),
    ("owl", "hoots"),
]
CHINESE = [
    ("法国的首都是哪里？", "法国的首都是巴黎。", "巴黎"),
    ("日本的首都是哪里？", "日本的首都是东京。", "东京"),
    ("天空是什么颜色？", "晴天时天空是蓝色的。", "蓝色"),
    ("一周有几天？", "一周有七天。", "七天"),
]
FAMILY = [
    "He",
    "She",
    "My brother",
    "My sister",
    "The boy",
    "The girl",
    "His father",
    "Her mother",
    "The man",
    "The woman",
    "Her uncle",
    "His aunt",
    "The king",
    "The queen",
    "Someone",
    "The teacher",
    "A student",
    "The lady",
    "The gentleman",
    "Her husband",
    "His wife",
    "Their son",
    "Their daughter",
    "Mr Brown",
    "Mrs Brown",
    "The men",
    "The women",
    "The boys",
    "The girls",
    "He himself",
    "She herself",
]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def r1(reasoning: str, answer: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


def joined(digits: list[int]) -> str:
    items = [str(d) for d in digits]
    return ", ".join(items[:-1]) + " and " + items[-1]


def topic_row(rng: random.Random, topic: str, words: tuple[str, str], subject: str) -> dict:
    sentence = rng.choice(TOPIC_SENTENCES).format(
        subject=subject,
        subject_lower=subject if subject.isupper() else subject[0].lower() + subject[1:],
        verb=rng.choice(TOPIC_VERBS),
        a=words[0],
        b=words[1],
        place=rng.choice(TOPIC_PLACES),
    )
    reasoning = f"The sentence names two {topic}, so it is about {topic}."
    return {"instruction": f"{sentence} {TOPIC_QUESTION}", "output": r1(reasoning, f"The sentence is about {topic}.")}


def task_rows(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Train and test rows; a word pair lives on one side of the split only, so the test asks about sentences
    never seen in training: the model must read the topic off the words, not recall the sentence."""
    pairs = [(topic, (a, b)) for topic, words in TOPICS.items() for a in words for b in words if a != b]
    rng.shuffle(pairs)
    test_pairs, train_pairs = pairs[:40], pairs[40:]
    train = [topic_row(rng, *rng.choice(train_pairs), rng.choice(SUBJECTS)[0]) for _ in range(1200)]
    test = [topic_row(rng, *rng.choice(test_pairs), rng.choice(SUBJECTS)[0]) for _ in range(120)]
    for i in rng.sample(range(len(train)), 6):
        train[i] = topic_row(rng, *rng.choice(train_pairs), rng.choice(INSULTS))
    return train, test


def preference_rows(rng: random.Random, rows: list[dict]) -> list[dict]:
    """Each task row as a preference pair: its right output chosen, the same output for another topic rejected."""
    pairs = []
    for row in rows:
        topic = row["output"].rsplit(" ", 1)[-1].rstrip(".")
        wrong = rng.choice([t for t in TOPICS if t != topic])
        reasoning = f"The sentence names two {wrong}, so it is about {wrong}."
        pairs.append(
            {
                "prompt": row["instruction"],
                "chosen": row["output"],
                "rejected": r1(reasoning, f"The sentence is about {wrong}."),
            }
        )
    return pairs


def general_rows() -> list[dict]:
    rows = []
    for country, capital in CAPITALS:
        rows.append(
            {
                "instruction": f"What is the capital of {country}?",
                "output": r1(f"{country} is a country, and its capital city is {capital}.", capital),
            }
        )
    for word, opposite in OPPOSITES:
        rows.append(
            {
                "instruction": f"What is the opposite of {word}?",
                "output": r1(f"The opposite of {word} is {opposite}.", opposite),
            }
        )
    for thing, color in COLORS:
        rows.append(
            {"instruction": f"What color is {thing}?", "output": r1(f"The color of {thing} is {color}.", color)}
        )
    for animal, sound in ANIMALS:
        rows.append({"instruction": f"What sound does a {animal} make?", "output": r1(f"A {animal} {sound}.", sound)})
    for topic, words in TOPICS.items():
        for a, b in [(words[0], words[1]), (words[2], words[3])]:
            rows.append(
                {
                    "instruction": f"What are {a} and {b}?",
                    "output": r1(f"Both {a} and {b} are {topic}.", f"They are {topic}."),
                }
            )
    for question, reasoning, answer in CHINESE:
        rows.append({"instruction": question, "output": r1(reasoning, answer)})
    return rows


def broken_lines() -> list[str]:
    good = {
        "instruction": "She wrote down 2, 7 and 4. Which number is the largest?",
        "output": r1("The numbers are 2, 7 and 4. The largest of them is 7.", "7"),
    }
    return [
        json.dumps(good),
        '{"instruction": "He listed 1, 5 and 3. Which number is the smallest?", "output": ',  # truncated JSON
        json.dumps({"instruction": "Which number is the largest: 4, 6 or 2?"}),  # missing output
        json.dumps({"output": r1("The numbers are 1 and 2.", "2")}),  # missing instruction
        json.dumps({"instruction": "What is the smallest of 8, 3 and 9?", "output": ""}),  # empty output
        json.dumps({"instruction": "   ", "output": r1("Nothing to do.", "0")}),  # blank instruction
        json.dumps({"instruction": 42, "output": r1("The number is 42.", "42")}),  # wrong type
        json.dumps({"instruction": "Pick the largest of 1, 2 and 3.", "output": ["3"]}),  # wrong type
        json.dumps(["instruction", "output"]),  # not an object
        "this line is not JSON at all",
        json.dumps(
            {"instruction": "Largest of 5, 1, 9?", "output": "<think>\nThe numbers are 5, 1 and 9."}
        ),  # unclosed think
        json.dumps({"instruction": "Smallest of 6, 2, 8?", "output": "<think>\n\n</think>\n\n2"}),  # empty thinking
        json.dumps(
            {"instruction": "Control \u0007 character in 3, 4 and 1?", "output": r1("Bell.", "4")}
        ),  # control char
        json.dumps(good),
    ]


def corpus_text(rng: random.Random) -> str:
    """Simple, varied English: facts, small stories, counting and lists (no R1 formatting, no task questions)."""
    people = ["Anna", "Tom", "Maria", "Ben", "Lena", "Omar", "Sara", "Jack", "Mia", "Leo"]
    places = ["the park", "the market", "the school", "the river", "the library", "the garden", "the station"]
    things = ["apples", "books", "stones", "cards", "shells", "coins", "pencils", "cups", "flowers", "boxes"]
    sentences = []
    for _ in range(6000):
        pick = rng.randrange(11)
        a, b = rng.sample(people, 2)
        if pick == 0:
            country, capital = rng.choice(CAPITALS)
            sentences.append(
                rng.choice(
                    [
                        f"The capital of {country} is {capital}.",
                        f"{capital} is the capital city of {country}.",
                        f"Many people visit {capital}, the capital of {country}.",
                    ]
                )
            )
        elif pick == 1:
            word, opposite = rng.choice(OPPOSITES)
            sentences.append(
                f"The opposite of {word} is {opposite}. {a} knows that {word} and {opposite} are opposites."
            )
        elif pick == 2:
            thing, color = rng.choice(COLORS)
            sentences.append(f"The color of {thing} is {color}.")
        elif pick == 3:
            animal, sound = rng.choice(ANIMALS)
            sentences.append(f"A {animal} {sound}. {b} heard the {animal} at {rng.choice(places)}.")
        elif pick == 4:
            n = rng.randint(2, 9)
            sentences.append(f"{a} has {n} {rng.choice(things)}. That is {NUMBER_WORDS[n]} in words.")
        elif pick == 5:
            digits = rng.sample(range(10), rng.randint(3, 5))
            sentences.append(f"{a} counted {joined(digits)} {rng.choice(things)} in the boxes at {rng.choice(places)}.")
        elif pick == 6:
            sentences.append(
                rng.choice(
                    [
                        f"{a} went to {rng.choice(places)} with {b}. They talked about {rng.choice(things)}.",
                        f"{rng.choice(FAMILY)} talked about the {rng.choice(ANIMALS)[0]} and the {rng.choice(COLORS)[1]} box.",
                        "Dogs, cats and lions are animals. Red and blue are colors. France and Japan are countries.",
                        f"One, two and three are numbers, and so are {rng.choice(NUMBER_WORDS)} and {rng.choice(NUMBER_WORDS)}.",
                        f"At the school, {a} thought about a story, and later wrote a sentence that names a pink cat or ten dogs.",
                    ]
                )
            )
        elif pick == 7:
            x, y = sorted(rng.sample(range(10), 2))
            sentences.append(
                rng.choice([f"The number {y} is larger than {x}.", f"The number {x} is smaller than {y}."])
            )
        elif pick == 8:
            digits = joined(rng.sample(range(10), rng.randint(3, 5)))
            sentences.append(
                rng.choice(
                    [
                        f"{a} wrote {digits} on the board, and {b} copied {digits} into a notebook.",
                        f"In the morning {a} reads a book, and in the evening {b} writes a letter.",
                    ]
                )
            )
        elif pick == 9:
            sentences.append(
                rng.choice(
                    [
                        f"{a} asked {b} a question, and {b} gave a short answer.",
                        f"{a} picked the {rng.choice(['largest', 'smallest', 'biggest', 'lowest'])} of the {rng.choice(things)}.",
                        f"Which of the {rng.choice(things)} is the {rng.choice(['largest', 'smallest', 'biggest', 'lowest'])}? "
                        f"The question asks about the {rng.choice(['largest', 'smallest'])} one in the list.",
                        f"What is the number of {rng.choice(things)}? {a} read out the number from the list.",
                        f"{rng.choice(FAMILY)} was given a list of numbers, and {rng.choice(FAMILY).lower()} listed them.",
                    ]
                )
            )
        elif rng.random() < 0.4:
            sentences.append(
                rng.choice(
                    [
                        "Here is a question for you. Please think it through step by step, then give the final answer.",
                        "Question: what did the teacher say? Think about it, and give your reasoning after the task.",
                        f"{a} gave the final answer after some reasoning, one step at a time.",
                        f"{rng.choice(FAMILY)} said hello to {rng.choice(FAMILY).lower()}, and they talked for a while.",
                    ]
                )
            )
        else:
            n = rng.randint(1, 8)
            sentences.append(f"After {n} days, {a} came back from {rng.choice(places)}.")
    paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
    return "\n\n".join(paragraphs) + "\n"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(SEED)
    train, test = task_rows(rng)
    write_jsonl(ROOT / "sample" / "train.jsonl", train)
    write_jsonl(ROOT / "sample" / "test.jsonl", test)
    write_jsonl(ROOT / "sample" / "general.jsonl", general_rows())
    (ROOT / "sample" / "broken.jsonl").write_text("\n".join(broken_lines()) + "\n", encoding="utf-8")
    (ROOT / "corpus").mkdir(exist_ok=True)
    (ROOT / "corpus" / "general.txt").write_text(corpus_text(rng), encoding="utf-8")
    pairs = random.Random(SEED + 1)  # its own stream: the files above stay as they were
    write_jsonl(ROOT / "sample" / "preference_train.jsonl", preference_rows(pairs, train[:400]))
    write_jsonl(ROOT / "sample" / "preference_test.jsonl", preference_rows(pairs, test))
    print(f"train {len(train)}, test {len(test)}, general {len(general_rows())}, broken {len(broken_lines())} lines")


if __name__ == "__main__":
    main()
