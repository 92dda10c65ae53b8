"""attack5: hostile GRPO answers against correctness_reward, each call timed (main thread, math-verify on)."""

import time

from r1lib.training.rewards import _math_verify, correctness_reward, math_checkable

_math_verify()  # sympy's one-off setup, not counted
C = "<think>\nlet me think\n</think>\n\n"
cases = [
    ("power tower no braces 9^9^9", "9^9^9", "1"),
    ("power tower spaced 9 ^ (9 ^ 9)", "9 ^ (9 ^ 9)", "1"),
    ("paren exponent (9^(9^9))", "(9^(9^9))", "1"),
    ("latex pow tower 9^{(9^9)}", "9^{(9^9)}", "1"),
    ("\\exp(\\exp(\\exp(10)))", "\\exp(\\exp(\\exp(10)))", "1"),
    ("e^{e^{e^{10}}}", "e^{e^{e^{10}}}", "1"),
    ("10^{999}", "10^{999}", "1"),
    ("999^{999}", "999^{999}", "1"),
    ("(10^999)!", "(10^{999})!", "1"),
    ("factorial 999!", "999!", "1"),
    ("double factorial 3000!!", "3000!!", "1"),
    ("factorial of factorial (99!)!", "(99!)!", "1"),
    ("gamma(10^5)", "\\Gamma(100000)", "1"),
    ("binomial 10^6 choose 5*10^5", "\\binom{1000000}{500000}", "1"),
    ("sum 1..10^7", "\\sum_{k=1}^{10000000} k", "1"),
    ("integral", "\\int_0^{1000} x^{x} dx", "1"),
    ("huge float 1e999999", "1e999999", "1"),
    ("nested sqrt x200", "\\sqrt{" * 200 + "2" + "}" * 200, "1"),
    ("product", "\\prod_{k=1}^{5000} k", "1"),
    ("unicode sup 9⁹⁹⁹⁹", "9⁹⁹⁹⁹", "1"),
    ("matrix power", "\\begin{pmatrix}1&1\\\\1&0\\end{pmatrix}^{999}", "1"),
]
print(f"{'case':42} {'checkable':>9} {'reward':>6} {'seconds':>8}")
for name, ans, ref in cases:
    t = time.perf_counter()
    r = correctness_reward(C + ans, ref)
    dt = time.perf_counter() - t
    print(f"{name:42} {str(math_checkable(ans, ref)):>9} {r:6.1f} {dt:8.3f}")

print("== the same, written as math-verify reads LaTeX ($...$ and \\boxed{}) ==")
wrapped = [(n, f"${a}$", r) for n, a, r in cases] + [(n + " boxed", f"\\boxed{{{a}}}", r) for n, a, r in cases]
wrapped += [("(9^(9^9)) vs reference x", "$(9^(9^9))$", "$x$"), ("2**(3**(4**5)) vs 1", "2**(3**(4**5))", "1")]
worst = 0.0
for name, ans, ref in wrapped:
    t = time.perf_counter()
    r = correctness_reward(C + ans, ref)
    dt = time.perf_counter() - t
    worst = max(worst, dt)
    if dt > 0.05:
        print(f"{name:42} {str(math_checkable(ans, ref)):>9} {r:6.1f} {dt:8.3f}")
print(f"worst single call: {worst:.3f} s")
