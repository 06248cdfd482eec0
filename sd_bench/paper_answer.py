"""The paper's evaluation answer rule, reimplemented: `grade_paper(response, gold)`.

Paper code: beanie00/self-distillation-analysis @ 5c51051, `eval/eval.py` run with `--enable_thinking`,
`eval/utils/parser.py` (`extract_answer`, `strip_string` and its helpers) and `eval/utils/grader.py`
(`check_is_correct` -> `math_equal` -> `symbolic_equal`). What that code does, step by step:
1. answer region (eval.py, `infer`): the text after the FIRST `<think>(.*?)</think>` match, stripped, when
   the response holds `<think>` and a later `</think>`; else the WHOLE response (a DeepSeek-R1 response that
   only closes `</think>` is graded whole, its thinking included);
2. extraction (parser.py `extract_answer`): what follows the LAST "boxed" (brace-matched when it starts with
   `{`, else up to the next `$`), newlines removed, one leading ":" and one trailing "." or "/" dropped;
   "" when there is no "boxed";
3. equivalence (grader.py `check_is_correct`): `math_equal(strip_string(pred), strip_string(gold))`:
   case-insensitive string match, multiple-choice letters, comma lists (sorted), numbers within 1e-4
   absolute (the gold also as x/100 and x*100: percent forms), bracket-insensitive match, tuples and
   matrices element-wise, equations, then sympy (`symbolic_equal`).
Known quirks are kept on purpose (parity means matching them): e.g. a gold of `\\text{east}` strips to ""
and then equals an empty prediction.

Departures (measured on the 2,959 public parity cases: see tests/test_answer_paper.py and docs/PARITY.md):
- sympy's own `parse_latex` is not tried: in the paper's environment (sympy 1.12, latex2sympy2 1.9.1,
  which pins antlr4 4.7.2) it always raised ImportError, since it demands antlr4 4.11. latex2sympy2 1.9.1
  itself cannot be installed beside math-verify (antlr4 4.13), so math-verify's `latex2sympy2_extended` is
  the LaTeX parser, made to convert as 1.9.1 did (`_latex2sympy`: no normalisation or lower-casing,
  `1\\frac{4}{5}` as a product, the longest valid prefix on a parser error, `\\text{..}` one symbol).
- `parse_expr` (which `eval`s its input) only sees strings without string literals, Python builtins,
  names starting with an underscore or sympy names with side effects; an answer that stays unparsed and
  is not such plain math is compared as a string only (the paper's `N(answer)` would `eval` it): model
  output is not code.
- time: the paper runs each sympy comparison in a fresh process with a 3 s timeout; here the whole check
  of one response shares one budget of TIMEOUT_S (`sd_bench.bounded`), which also bounds the string steps.

Light core: sympy, regex and word2number; no torch.
"""

from __future__ import annotations

import builtins
import functools
import io
import math
import re
import tokenize

from sd_bench.bounded import call_bounded
from sd_bench.grading import Grade

TIMEOUT_S = 2.4  # with math-verify's 2.0 s (sd_bench.answer), both rules stay under 5 s per response
MAX_ANSWER_CHARS = 1000  # as sd_bench.answer: longer extracted answers are compared as strings only

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


# ---------------------------------------------------------------- 1. answer region (eval.py `infer`)


def think_split(response: str) -> tuple[str, str] | None:
    """(thinking, answer part) as eval.py splits them: `re.search(r'<think>(.*?)</think>', DOTALL)`, both
    stripped; None when there is no such match. Linear time: the leftmost match starts at the first
    `<think>` (if that one has no later `</think>`, none has) and ends at the next `</think>`."""
    start = response.find(_THINK_OPEN)
    if start < 0:
        return None
    end = response.find(_THINK_CLOSE, start + len(_THINK_OPEN))
    if end < 0:
        return None
    return response[start + len(_THINK_OPEN) : end].strip(), response[end + len(_THINK_CLOSE) :].strip()


def answer_region(response: str) -> str:
    """The part eval.py grades with thinking on: after the first think block, else the whole response."""
    split = think_split(response)
    return response if split is None else split[1]


def thinking_text(response: str) -> str:
    """The thinking of a response, whose tokens are `thinking_tokens` (the paper's thinking length).

    Both tags: the content of the first think block, stripped, as eval.py measures it. sd-bench also
    defines it where eval.py reports 0 (its regex needs both tags): a lone `</think>` (DeepSeek-R1-Distill,
    whose template opens `<think>` in the prompt): the text before it; a `<think>` never closed (truncated
    while thinking): the text after it. No tags (thinking off): "" (0 tokens).
    """
    split = think_split(response)
    if split is not None:
        return split[0]
    close = response.find(_THINK_CLOSE)
    if close >= 0:
        return response[:close].strip()
    start = response.find(_THINK_OPEN)
    return response[start + len(_THINK_OPEN) :].strip() if start >= 0 else ""


# ---------------------------------------------------------------- 2. extraction (parser.py `extract_answer`)

_BRACES = re.compile(r"[{}]")


def extract_answer(region: str) -> str:
    """The paper's extracted answer of an answer region ("" when it holds no "boxed")."""
    text = region.replace("\u043a\u0438", "")
    cut = text.rfind("boxed")
    if cut < 0:
        return ""
    rest = text[cut + len("boxed") :]
    if not rest:
        return ""
    if rest[0] == "{":
        depth, end = 1, len(rest)  # an unclosed box runs to the end
        for m in _BRACES.finditer(rest, 1):
            depth += 1 if m.group() == "{" else -1
            if depth == 0:
                end = m.start()
                break
        pred = rest[1:end]
    else:
        pred = rest.split("$")[0].strip()
    pred = re.sub(r"\n\s*", "", pred)
    return pred.removeprefix(":").removesuffix(".").removesuffix("/")


# ---------------------------------------------------------------- 3a. normalisation (parser.py `strip_string`)

# parser.py `unit_texts` ("units mainly from MathQA"), each also with an "s" appended. The entries are regex
# patterns there (not escaped: "." matches any character), and so they are here.
UNIT_TEXTS = (  # noqa: SIM905  (the paper's list, compactly)
    "east, degree, mph, kmph, ft, m sqaure,  m east, sq m, deg, mile, q ., monkey, prime, ratio, profit of rs, "
    "rd, o, gm, p . m, lb, tile, per, dm, lt, gain, ab, way, west, a ., b ., c ., d ., e ., f ., g ., h ., t, "
    "a, h, no change, men, soldier, pie, bc, excess, st, inches, noon, percent, by, gal, kmh, c, acre, rise, "
    "a . m, th, π r 2, sq, mark, l, toy, coin, sq . m, gallon, ° f, profit, minw, yr, women, feet, am, pm, "
    "hr, cu cm, square, v â € ™, are, rupee, rounds, cubic, cc, mtr, s, ohm, number, kmph, day, hour, "
    "minute, min, second, man, woman, sec, cube, mt, sq inch, mp, ∏ cm ³, hectare, more, sec, unit, cu . m, "
    "cm 2, rs ., rs, kg, g, month, km, m, cm, mm, apple, liter, loss, yard, pure, year, increase, decrease, "
    "d, less, Surface, litre, pi sq m, s ., metre, meter, inch"
).split(", ")
UNIT_TEXTS = UNIT_TEXTS + [u + "s" for u in UNIT_TEXTS]
_UNIT_PATTERNS = [re.compile(r"(^|\W)" + u + r"($|\W)") for u in UNIT_TEXTS]
_MONTHS = re.compile(
    r"\b(January|February|March|April|May|June|July|August|September|October|November|December)\b",
    re.IGNORECASE,
)
_VARIABLE_PREFIXES = ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to")


def _word_to_number(text: str) -> str:
    """parser.py `convert_word_number`: "five" -> "5" (word2number, as the paper), else unchanged."""
    from word2number import w2n

    try:
        return str(w2n.word_to_num(text))
    except Exception:  # noqa: BLE001  not number words: keep the text (the paper's bare except)
        return text


def _fix_fracs(s: str) -> str:
    """parser.py `_fix_fracs`: `\\frac12` -> `\\frac{1}{2}`, `\\frac1{72}` -> `\\frac{1}{72}`."""
    head, *pieces = s.split("\\frac")
    out = [head]
    for piece in pieces:
        out.append("\\frac")
        if piece.startswith("{"):
            out.append(piece)
            continue
        if len(piece) < 2:
            return s  # the paper gives up on the whole string
        a, b, post = piece[0], piece[1], piece[2:]
        out.append("{" + a + "}" + (b + post if b == "{" else "{" + b + "}" + post))
    return "".join(out)


def _fix_a_slash_b(s: str) -> str:
    """parser.py `_fix_a_slash_b`: "3/4" -> `\\frac{3}{4}` when both sides are plain integers (or sqrt)."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    a, b = parts
    try:
        a = a if "sqrt" in a else int(a)
        b = b if "sqrt" in b else int(b)
    except ValueError:
        return s
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


@functools.lru_cache(maxsize=65536)
def strip_string(answer: str) -> str:
    """The paper's answer normalisation (parser.py `strip_string`), step for step."""
    s = str(answer).strip().replace("\n", "").rstrip(".").replace("\\!", "")
    s = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", s).replace("bmatrix", "pmatrix")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    without_unit = re.sub(r"\\text{.*?}$", "", s).strip()  # a trailing \text{unit}, unless that is all
    if without_unit:
        s = without_unit
    for unit in _UNIT_PATTERNS:
        stripped = unit.sub(r"\1\2", s)
        if stripped:
            s = stripped
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    s = _word_to_number(s)
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    for prefix in _VARIABLE_PREFIXES:
        s = s.replace(prefix, "")
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "")
    s = _MONTHS.sub("", s)
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    # (the paper's "strip {..} / (..) / [..] around an alphanumeric string" never fires: a string that
    # starts with a bracket is not alphanumeric; its quote removal discards its result: both omitted)
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("+\\inity", "\\infty").replace("and", "").replace("\\mathbf", "")
    s = re.sub(r"\\mbox{.*?}", "", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", s)
    s = re.sub(r"(\d+)\.0*$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "k = 3" -> "3"
        s = sides[1]
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s).replace(" ", "")
    return _fix_a_slash_b(_fix_fracs(s))


# ---------------------------------------------------------------- 3b. equivalence (grader.py `math_equal`)

_CHOICE_PATTERNS = [
    re.compile(p.replace("X", letter))
    for p in (r"^\(X\)", r"^X\.", r"^X\)", r"^\*\*X\*\*", r"^X:")
    for letter in "ABCDE"
]  # grader.py `single_choice_patterns` (same patterns; the order of trial does not change the verdict)
_TUPLE = re.compile(r"(\(|\[).+(\)|\])")
_PMATRIX_OPEN, _PMATRIX_CLOSE = "\\begin{pmatrix}", "\\end{pmatrix}"
MAX_DEPTH = 5  # math_equal's max_depth


def _choice_clean(pred: str) -> str:
    """grader.py `choice_answer_clean`: the last standalone letter A-E, else the cleaned string."""
    pred = pred.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    letters = re.findall(r"\b(A|B|C|D|E)\b", pred.upper())
    pred = letters[-1] if letters else pred.strip().strip(".")
    return pred.rstrip(".").rstrip("/")


def _parse_number(text: str) -> float | None:
    """grader.py `parse_digits`: commas dropped; "50%" (or "50\\%") -> 0.5; None when not a number."""
    text = text.replace(",", "")
    try:
        return float(text)
    except ValueError:
        pass
    if text.endswith("%"):
        text = text[:-1].removesuffix("\\")
        try:
            return float(text) / 100
        except ValueError:
            pass
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(b, a, abs_tol=1e-4)  # grader.py `numeric_equal`


def _to_pmatrix(text: str) -> str:
    """grader.py `str_to_pmatrix`: "{1,2}" -> a pmatrix row (as the paper writes it)."""
    rows = [m.strip("{}") for m in re.findall(r"\{.*,.*\}", text.strip())]
    return ", ".join(_PMATRIX_OPEN + m.replace(",", "\\") + _PMATRIX_CLOSE for m in rows)


def _matrix_lines(text: str) -> list[str]:
    body = text[len(_PMATRIX_OPEN) : -len(_PMATRIX_CLOSE)]
    return [line.strip() for line in body.split("\\\\") if line.strip()]


def _is_matrix(text: str) -> bool:
    return text.startswith(("\\begin{pmatrix}", "\\begin{bmatrix}")) and text.endswith(
        ("\\end{pmatrix}", "\\end{bmatrix}")
    )


def math_equal(pred: str, ref: str, depth: int = 0) -> bool:
    """grader.py `math_equal(prediction, reference)` with its defaults (percentages, closeness, depth 5)."""
    if depth > MAX_DEPTH:
        return False
    again = functools.partial(math_equal, depth=depth + 1)
    if pred.strip().lower() == ref.strip().lower():
        return True
    if ref in ("A", "B", "C", "D", "E") and _choice_clean(pred) == ref:
        return True
    for pattern in _CHOICE_PATTERNS:
        if pattern.match(pred) and again(pattern.sub("", pred, count=1).strip(), ref):
            return True
    if "," in pred and "," in ref:
        pred_parts = sorted(p.strip() for p in pred.split(","))
        ref_parts = sorted(p.strip() for p in ref.split(","))
        if len(pred_parts) == len(ref_parts) and all(map(again, pred_parts, ref_parts)):
            return True
    pred_num, ref_num = _parse_number(pred), _parse_number(ref)
    if pred_num is not None and ref_num is not None:  # numbers: decided here, either way
        return any(_close(pred_num, r) for r in (ref_num / 100, ref_num, ref_num * 100))
    if not pred:
        return False
    ref, pred = ref.strip(), pred.strip()
    if "pmatrix" in pred and "pmatrix" not in ref:
        ref = _to_pmatrix(ref)
    pred_str, ref_str = pred, ref
    if (pred.startswith("[") and pred.endswith("]") and not ref.startswith("(")) or (
        pred.startswith("(") and pred.endswith(")") and not ref.startswith("[")
    ):
        pred_str, ref_str = pred_str.strip("[]()"), ref_str.strip("[]()")
    drop = str.maketrans("", "", "{}()")
    if pred_str.translate(drop).lower() == ref_str.translate(drop).lower():
        return True
    if _TUPLE.match(pred) and _TUPLE.match(ref):
        pred_parts, ref_parts = pred[1:-1].split(","), ref[1:-1].split(",")
        if len(pred_parts) == len(ref_parts) and all(map(again, pred_parts, ref_parts)):
            return True
    if _is_matrix(pred) and _is_matrix(ref) and _matrices_equal(pred, ref, again):
        return True
    if pred.count("=") == 1 and ref.count("=") == 1:
        lhs, rhs = pred.split("=")
        pred_diff = f"{lhs.strip()} - ({rhs.strip()})"
        lhs, rhs = ref.split("=")
        ref_diff = f"{lhs.strip()} - ({rhs.strip()})"
        if symbolic_equal(pred_diff, ref_diff) or symbolic_equal(f"-({pred_diff})", ref_diff):
            return True
    elif pred.count("=") == 1 and len(pred.split("=")[0].strip()) <= 2 and "=" not in ref:
        if again(pred.split("=")[1], ref):
            return True
    elif ref.count("=") == 1 and len(ref.split("=")[0].strip()) <= 2 and "=" not in pred:  # noqa: SIM102
        if again(pred, ref.split("=")[1]):  # (kept as the paper's if/elif chain reads)
            return True
    return symbolic_equal(pred, ref)


def _matrices_equal(pred: str, ref: str, again) -> bool:
    pred_lines, ref_lines = _matrix_lines(pred), _matrix_lines(ref)
    if len(pred_lines) != len(ref_lines):
        return False
    for pred_line, ref_line in zip(pred_lines, ref_lines):
        pred_cells, ref_cells = pred_line.split("&"), ref_line.split("&")
        if len(pred_cells) != len(ref_cells) or not all(map(again, pred_cells, ref_cells)):
            return False
    return True


# ---------------------------------------------------------------- 3c. sympy (grader.py `symbolic_equal`)

_SAFE_BUILTINS = {"abs", "max", "min", "sum", "round", "pow", "int", "float", "complex"}
_SIDE_EFFECT_WORDS = ("plot", "preview", "init_", "print", "import", "exec", "eval", "open", "system", "var")


def _safe_for_parse_expr(text: str) -> bool:
    """May `parse_expr` (an `eval`) see this? No string literals, no names starting with "_", no builtins,
    no sympy names with side effects (plot, preview, init_printing, ...)."""
    if "__" in text or "'" in text or '"' in text or "`" in text:
        return False
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type != tokenize.NAME:
                continue  # numbers such as 204_5 (2045 to Python, as the paper's parse_expr reads it) pass
            name = tok.string
            if name.startswith("_") or (name in vars(builtins) and name not in _SAFE_BUILTINS):
                return False
            if any(word in name.lower() for word in _SIDE_EFFECT_WORDS):
                return False
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return False  # parse_expr would fail on it too
    return True


def _parse_expr(text: str):
    from sympy.parsing.sympy_parser import parse_expr

    if not _safe_for_parse_expr(text):
        raise ValueError("not parsed as a Python expression")
    return parse_expr(text)


_INTEGER_BEFORE_FRAC = re.compile(r"(\d)\s*(\\frac)")
_ERROR_COLUMN = re.compile(r"\n(~*)\^$")
# LaTeX that latex2sympy2 1.9.1 could not parse but latex2sympy2_extended can (found on the parity cases).
_UNKNOWN_TO_1_9_1 = ("\\textbf",)


_TEXT_COMMAND = re.compile(r"\\(text|mathrm)\{([^{}]*)\}")


def _opaque_symbol(m: re.Match) -> str:
    """`\\text{X}` / `\\mathrm{X}` as latex2sympy2 1.9.1 read them: one symbol named by the whole command
    (spaces dropped), equal only to the same command (extended reads `\\text{(C)}` as the symbol C)."""
    return "T_{" + m.group(1)[0] + re.sub(r"\s+", "", m.group(2)).encode().hex() + "}"


class _LexerError(Exception):
    """A character the LaTeX lexer rejects (1.9.1 raised on it wherever it stood)."""


@functools.cache
def _converter_class():
    """latex2sympy2_extended's converter, with lexer errors told apart from parser errors (both reach its
    one error listener as the same kind of exception)."""
    from antlr4.error.ErrorListener import ErrorListener
    from latex2sympy2_extended import latex2sympy2 as l2s

    class LexerErrors(ErrorListener):
        def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):  # antlr's method name
            raise _LexerError(msg)

    class Converter(l2s._Latex2Sympy):
        def create_parser(self, latex_str):
            parser = super().create_parser(latex_str)
            lexer = parser.getTokenStream().tokenSource
            lexer.removeErrorListeners()
            lexer.addErrorListener(LexerErrors())
            return parser

    return Converter, l2s.ConversionConfig(
        interpret_as_mixed_fractions=False, interpret_contains_as_eq=False, lowercase_symbols=False
    )


def _latex2sympy(text: str, prefix_retries: int = 3):
    """latex2sympy2 1.9.1 as the paper used it, emulated on latex2sympy2_extended:
    - no normalisation, no lower-casing of symbols, equations kept;
    - "1\\frac{4}{5}" is 1 * 4/5 (1.9.1 multiplies; extended reads a mixed fraction 9/5 whatever its
      `interpret_as_mixed_fractions` says), so an explicit `\\cdot` is put between them;
    - 1.9.1's start rule does not end at EOF: it parses the longest valid prefix and ignores the rest
      ("2)\\cup(13" is 2, "-5/2)" is -5/2), so on a parser error at column c > 0 the first c characters are
      parsed instead (not on a character the lexer rejects: 1.9.1 raised there);
    - `\\text{X}` and `\\mathrm{X}` are opaque symbols (`_opaque_symbol`); `\\textbf` does not parse.
    """
    if any(command in text for command in _UNKNOWN_TO_1_9_1):
        raise ValueError("not parsed by latex2sympy2 1.9.1")
    converter, config = _converter_class()
    text = _INTEGER_BEFORE_FRAC.sub(r"\1 \\cdot \2", text)
    text = _TEXT_COMMAND.sub(_opaque_symbol, text)
    try:
        return converter(config=config).parse(text)
    except _LexerError:
        raise
    except Exception as exc:
        m = _ERROR_COLUMN.search(str(exc))
        column = len(m.group(1)) if m else 0
        if prefix_retries <= 0 or not 0 < column < len(text) or not text[:column].strip():
            raise
        return _latex2sympy(text[:column], prefix_retries - 1)


@functools.lru_cache(maxsize=8192)  # the gold is parsed once for the k responses of a problem
def _to_sympy(text: str):
    """grader.py `symbolic_equal._parse`: the first parser that succeeds, on the text with `\\\\` made `\\`
    and then as is; the text itself when none does."""
    for parse in (_parse_expr, _latex2sympy):
        for candidate in (text.replace("\\\\", "\\"), text):
            try:
                return parse(candidate)
            except Exception:  # noqa: BLE001, S112  the paper's bare except: try the next parser
                continue
    return text


def symbolic_equal(a_text: str, b_text: str) -> bool:
    """grader.py `symbolic_equal`: direct, simplify, equation, numeric (1e-4) and matrix comparisons."""
    from sympy import N, simplify

    a, b = _to_sympy(a_text), _to_sympy(b_text)
    if any(isinstance(x, str) and not _safe_for_parse_expr(x) for x in (a, b)):
        # an unparsed answer stays a string, which the checks below hand to sympify (an eval, as in the
        # paper's code): only the direct comparison is safe for one that is not plain math
        return str(a) == str(b)
    checks = (
        lambda: str(a) == str(b) or a == b,
        lambda: a.equals(b) or simplify(a - b) == 0,
        lambda: abs(a.lhs - a.rhs).equals(abs(b.lhs - b.rhs)),
        lambda: _close(float(N(a)), float(N(b))),
        lambda: (
            a.shape == b.shape
            and a.applyfunc(lambda x: round(x, 3)).equals(b.applyfunc(lambda x: round(x, 3)))
        ),
    )
    for check in checks:
        try:
            if check():
                return True
        except Exception:  # noqa: BLE001, S112  the paper's bare except: next comparison
            continue
    return False


# ---------------------------------------------------------------- the rule


def check_is_correct(pred: str, gold: str) -> bool:
    """grader.py `check_is_correct`: `math_equal(strip_string(pred), strip_string(gold))`."""
    pred_s, gold_s = strip_string(pred), strip_string(gold)
    if len(pred_s) > MAX_ANSWER_CHARS:
        return pred_s.strip().lower() == gold_s.strip().lower()
    return math_equal(pred_s, gold_s)


@functools.cache
def warm_up() -> None:
    """Import sympy and build the LaTeX parser once per process (seconds, on a loaded machine more than the
    budget) before the first response's time budget starts, so that it is not graded wrong for it."""
    try:
        _parse_expr("1")
        _latex2sympy("\\frac{1}{2}")
    except Exception:  # noqa: BLE001, S110  a broken install shows up as "not equivalent", never a crash
        pass


def grade_paper(response: str, gold: str) -> Grade:
    """Grade one response by the paper's evaluation rule. `extracted` is None when no "boxed" is found."""
    region = answer_region(response)
    pred = extract_answer(region)
    warm_up()
    correct = call_bounded("sd_bench.paper_answer:check_is_correct", (pred, str(gold)), TIMEOUT_S, False)
    return Grade(bool(correct), pred if "boxed" in region else None)
