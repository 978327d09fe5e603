"""Texts a caller might send as an expression to escape the language or exhaust the service:
each must be refused with a 4xx and leave nothing behind."""

from __future__ import annotations

__all__ = ["ESCAPES"]

ESCAPES = [
    "__import__('os')",
    "__import__('os').system('touch /tmp/dydc-pwned')",
    "().__class__.__bases__",
    "().__class__.__bases__[0].__subclasses__()",
    "x.__class__.__mro__",
    "exp.__globals__",
    "(lambda: 1)()",
    "lambda: 0",
    "[x for x in ()]",
    "{k: 1 for k in 'ab'}",
    "(i for i in ())",
    "'a' * 10**9",
    "b'x'",
    "9 ** 9 ** 9",
    "2 ** 2 ** 2 ** 2 ** 2",
    "x ** 10 ** 100",
    "open('/etc/passwd')",
    "exec('1')",
    "eval('1')",
    "compile('1', 'f', 'eval')",
    "getattr(x, 'real')",
    "globals()",
    "breakpoint()",
    "print(1)",
    "__builtins__",
    "x if x else y",
    "x and y",
    "[x][0]",
    "(x := 1)",
    "exp(*[x])",
    "exp(**{})",
    "f'{x}'",
    "x @ y",
    "x // y",
    "...",
    "None",
    "import os",
    "x; import os",
    "x\n__import__('os')",
    "-(" * 100 + "x" + ")" * 100,
    "exp(" * 70 + "x" + ")" * 70,
    "(" * 250 + "x" + ")" * 250,
    "-" * 4000 + "x",
    "x" + " + x" * 1000,
    "1" * 400,
    "1e999",
    "-1e999 * x",
    "9" * 5000,
    "\uff45xp(x)",  # fullwidth e
    "\u0445 + 1",  # Cyrillic x
    "x \u2212 1",  # minus sign
    "x\u200b+ 1",  # zero-width space
    "x\x00",
    "\x00",
    "x\x00__import__('os')",
    "x\x1b[2J",
    "",
    " ",
]
