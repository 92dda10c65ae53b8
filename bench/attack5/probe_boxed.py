"""attack5: as_number's \\boxed{(.*)} search on an answer of many unclosed \\boxed{ is quadratic (each start scans to
the end and backs off); the answer's length is not bounded before it (math_checkable bounds only math-verify).
Run: python bench/attack5/probe_boxed.py"""

import time

from r1lib.training.rewards import correctness_reward

C = "<think>\nx\n</think>\n\n"
for n in (1000, 4000, 16000):
    answer = "\\boxed{" * n
    t = time.perf_counter()
    correctness_reward(C + answer, "42")
    print(f"{n:6} unclosed \\boxed{{ ({len(answer):7} chars): {time.perf_counter() - t:7.3f} s")
