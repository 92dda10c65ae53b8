"""attack5: wrong or hedged answers that the GRPO correctness reward scores 1.0 against the reference "42" (and the
match rule that passed each). A policy that lists candidates ("41, 42", "41 or 42") or negates the answer is paid as
a correct one: GRPO learns to hedge. Run: python bench/attack5/reward_hacks.py"""

import time

from r1lib.training.rewards import _math_verify, correctness_reward, format_reward, match

_math_verify()
C = "<think>\nx\n</think>\n\n"
for reference, answers in {
    "42": ["41 or 42", "41, 42", "\\{41, 42\\}", "$41 \\lor 42$", "the answer is not 42", "4-2", "4 - 2", "42%",
           "-42?", "1, 2, 3, ..., 100 (one of these is 42)"],
    "1/2": ["1/2 or 2", "12", "$\\frac{1}{2}$ is wrong"],
    "-3": ["3", "- 3 or 3"],
    "3.14": ["314", "3,14"],
}.items():  # fmt: skip
    for answer in answers:
        t = time.perf_counter()
        reward = correctness_reward(C + answer, reference)
        print(
            f"reference {reference!r:6} answer {answer!r:42} reward {reward}  match {match(answer, reference)!s:10} "
            f"{time.perf_counter() - t:.3f} s"
        )

print("== format reward: reasoning or answer that shows nothing ==")
EMPTY = ["<think>\nx\n</think>\n\n\u200b", "<think>\n\u200b\n</think>\n\n42"]
EMPTY += ["<think>\n\u3164\n</think>\n\n\u3164", "<think>\n.\n</think>\n\n."]
for completion in EMPTY:
    print(f"{completion!r:45} format {format_reward(completion)}")
