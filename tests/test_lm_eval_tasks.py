"""End-to-end lm-eval runs through the real task YAMLs: a canned-output model with hand-computed metrics,
the group's unweighted macro average, the k override, and a real `--model hf` run on a tiny local Qwen3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lm_eval.models  # noqa: F401  (fills the registry before we add to it)
import pytest
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from sd_bench import lm_eval_tasks
from sd_bench.markers import MARKERS

# k = 2 responses per problem; GOLD is replaced by the doc's gold answer.
PATTERNS = {
    # correct + wrong; both answered; E = 3 (wait, check, hmm) and 1 (perhaps)
    "right": [
        "<think>Wait, let me check. Hmm.</think> So \\boxed{GOLD}.",
        "<think>Perhaps.</think> \\boxed{-12345}",
    ],
    # no answer (none; unbalanced box); E = 0 and 1 ("Unlikely" contains "likely")
    "none": ["I have no idea.", "Unlikely! \\boxed{GOLD"],
    # both correct (the boxed answer inside <think> does not count); E = 0 and 0
    "both": ["\\boxed{GOLD}", "<think>\\boxed{-12345}</think>\\boxed{GOLD}"],
}
# per-doc (acc, pass_at_k, answer_rate, epistemic_count), computed by hand from PATTERNS
PER_DOC = {"right": (0.5, 1.0, 1.0, 2.0), "none": (0.0, 0.0, 0.0, 0.5), "both": (1.0, 1.0, 1.0, 0.0)}
# which docs each task evaluates, and their pattern (MATH500 gets 3 docs so that size weighting would differ)
PLAN = {
    "sd_aime24": ["right"],
    "sd_aime25": ["none"],
    "sd_amc23": ["both"],
    "sd_math500": ["right", "right", "none"],
}


@register_model("sd_canned")
class CannedLM(LM):
    """Returns PATTERNS[plan][i] for the i-th repeat of each doc; records the prompts it saw."""

    def __init__(self, **kwargs):
        super().__init__()
        self.seen: dict[tuple[str, int], int] = {}
        self.prompts: list[str] = []

    def generate_until(self, requests):
        out = []
        for req in requests:
            key = (req.task_name, req.doc_id)
            i = self.seen.get(key, 0)
            self.seen[key] = i + 1
            self.prompts.append(req.args[0])
            pattern = PLAN[req.task_name][req.doc_id] if req.task_name in PLAN else "right"
            out.append(PATTERNS[pattern][i].replace("GOLD", req.doc["answer"]))
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


def _expected(task: str) -> dict[str, float]:
    docs = [PER_DOC[p] for p in PLAN[task]]
    return {
        name: sum(d[i] for d in docs) / len(docs)
        for i, name in enumerate(("acc", "pass_at_k", "answer_rate", "epistemic_count"))
    }


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SD_BENCH_CACHE", str(tmp_path / "cache"))


def test_canned_model_metrics_and_macro_average():
    tm = lm_eval_tasks.task_manager(k=2, max_gen_toks=64, include_defaults=False)
    lm = CannedLM()
    out = simple_evaluate(
        model=lm,
        tasks=["sd_ood_math"],
        task_manager=tm,
        bootstrap_iters=0,
        samples={t: list(range(len(p))) for t, p in PLAN.items()},
        log_samples=True,
    )
    res = out["results"]
    for task in PLAN:
        exp = _expected(task)
        for metric, value in exp.items():
            assert res[task][f"{metric},none"] == pytest.approx(value), (task, metric)
        # no tokenizer in model_args: lengths in characters, never tokens
        assert "response_tokens,none" not in res[task]
        assert out["configs"][task]["repeats"] == 2
    # hand-computed response_chars on AIME24 (one doc, pattern "right")
    gold = out["samples"]["sd_aime24"][0]["doc"]["answer"]
    texts = [t.replace("GOLD", gold) for t in PATTERNS["right"]]
    assert res["sd_aime24"]["response_chars,none"] == pytest.approx(sum(map(len, texts)) / 2)
    assert res["sd_aime24"]["epistemic_per_1k_chars,none"] == pytest.approx(
        (3000 / len(texts[0]) + 1000 / len(texts[1])) / 2
    )
    assert res["sd_aime24"]["marker_wait,none"] == pytest.approx(0.5)
    assert res["sd_aime24"]["marker_perhaps,none"] == pytest.approx(0.5)

    # group: unweighted macro average over the four tasks (sizes 1, 1, 1, 3 would weight differently)
    group = res["sd_ood_math"]
    for metric in ("acc", "pass_at_k", "answer_rate", "epistemic_count"):
        macro = sum(_expected(t)[metric] for t in PLAN) / 4
        assert group[f"{metric},none"] == pytest.approx(macro), metric
    assert group["acc,none"] == pytest.approx((0.5 + 0 + 1 + 1 / 3) / 4)
    assert group["acc,none"] != pytest.approx((0.5 + 0 + 1 + 3 * (1 / 3)) / 6)

    # sample logs keep all k responses and the per-doc marker means
    sample = out["samples"]["sd_math500"][2]
    assert len(sample["filtered_resps"][0]) == 2
    assert sample["marker_likely"] == pytest.approx(0.5)
    # no tokenizer: the plain paper prompt, no template
    assert lm.prompts[0].endswith("Please reason step by step, and put your final answer within \\boxed{}.")


def test_probe_prompts_and_id_group():
    tm = lm_eval_tasks.task_manager(k=1, include_defaults=False)
    lm = CannedLM()
    out = simple_evaluate(
        model=lm,
        tasks=["sd_context_probe", "sd_id_math"],
        task_manager=tm,
        limit=1,
        bootstrap_iters=0,
        log_samples=True,
    )
    docs = {t: out["samples"][t][0]["doc"] for t in ("sd_probe_none", "sd_probe_answer", "sd_probe_solution")}
    assert docs["sd_probe_none"]["input"] == docs["sd_probe_none"]["prompt"]
    assert "Correct solution:" not in docs["sd_probe_none"]["input"]
    assert docs["sd_probe_answer"]["input"].endswith(
        f"\n\nCorrect solution: {docs['sd_probe_answer']['answer']}\n\nCorrectly solve the original question."
    )
    assert docs["sd_probe_solution"]["solution"].startswith("We have that")
    assert f"Correct solution: {docs['sd_probe_solution']['solution']}" in docs["sd_probe_solution"]["input"]
    assert out["results"]["sd_id_math"]["acc,none"] == pytest.approx(1.0)  # pattern "right", k = 1
    assert out["configs"]["sd_dapo_seen512"]["generation_kwargs"]["temperature"] == 0.6


def test_task_files_defaults_and_thinking_off(tmp_path):
    src = Path(lm_eval_tasks.tasks_path())
    template = (src / "_sd_math_template").read_text()
    for line in (
        "repeats: 16",
        "  temperature: 0.6",
        "  top_p: 0.95",
        "  max_gen_toks: 38912",
        "  until: []",
    ):
        assert f"\n{line}\n" in template
    names = sorted(p.stem for p in src.glob("*.yaml"))
    assert len(names) == 15 and all(n.startswith("sd_") for n in names)
    off = lm_eval_tasks.write_tasks(tmp_path / "off", k=3, thinking="off", max_gen_toks=100)
    text = (off / "_sd_math_template").read_text()
    for line in (
        "repeats: 3",
        "  temperature: 0.7",
        "  top_p: 0.8",
        "  max_gen_toks: 100",
        "  thinking: false",
    ):
        assert f"\n{line}\n" in text
    assert sorted(p.stem for p in off.glob("*.yaml")) == names
    # CLI
    cli = [sys.executable, "-m", "sd_bench.cli", "tasks-path"]
    # tasks-path prints the --include_path folder: the shipped folder when lm-eval here holds no copy, else a
    # cache folder with the same template and only the task files that copy lacks (lm_eval_tasks.include_path)
    printed = Path(subprocess.run(cli, capture_output=True, text=True, check=True).stdout.strip())
    state, differ = lm_eval_tasks.copy_state(src, lm_eval_tasks.installed_copy())
    if state == "missing":
        assert printed == src
    else:
        assert (printed / "_sd_math_template").read_text() == template
        included = {p.relative_to(printed).as_posix() for p in printed.rglob("*.yaml")}
        if "_sd_math_template" in differ or "utils.py" in differ:  # every task includes them
            assert included == {p.relative_to(src).as_posix() for p in src.rglob("*.yaml")}
        else:
            assert included <= set(differ)
    printed = subprocess.run(
        cli + ["--k", "2", "--out", str(tmp_path / "k2")], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert "\nrepeats: 2\n" in (Path(printed) / "_sd_math_template").read_text()


def test_pathological_outputs_are_scored():
    doc = {"answer": "540", "tokenizer": ""}
    bad = [
        "",
        "\\boxed{" * 20000,
        "}" * 50000 + "\\boxed{540}",
        "x" * 100_000,
        "</think>" * 1000,
        "\\boxed{\\frac{1}{0}}",
        None,
    ]
    metrics = lm_eval_tasks.process_results(doc, [bad])
    assert metrics["acc"] == pytest.approx(1 / len(bad))
    assert metrics["answer_rate"] == pytest.approx(2 / len(bad))
    # take_first-style results (a bare string) work too
    assert lm_eval_tasks.process_results(doc, ["\\boxed{540}"])["pass_at_k"] == 1.0


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory):
    pytest.importorskip("torch")
    from sd_bench.tiny_model import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "tiny-qwen3")


def test_hf_tiny_qwen3_chat_template_and_exact_tokens(tiny_qwen3):
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    tm = lm_eval_tasks.task_manager(
        k=2, max_gen_toks=12, model_args=f"pretrained={tiny_qwen3}", include_defaults=False
    )
    out = simple_evaluate(
        model="hf",
        model_args=f"pretrained={tiny_qwen3},dtype=float32",
        tasks=["sd_aime24"],
        task_manager=tm,
        limit=2,
        device="cpu",
        batch_size=1,
        bootstrap_iters=0,
        log_samples=True,
    )
    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    res = out["results"]["sd_aime24"]
    samples = out["samples"]["sd_aime24"]
    assert "response_chars,none" not in res
    counts = []
    for s in samples:
        prompt = s["arguments"][0][0]
        assert prompt.startswith("<|im_start|>user\n") and prompt.endswith(
            "<|im_end|>\n<|im_start|>assistant\n"
        )
        assert prompt.count("<|im_start|>") == 2  # templated once, no system prompt
        counts += [len(tok(r, add_special_tokens=False)["input_ids"]) for r in s["filtered_resps"][0]]
    assert len(counts) == 4
    assert res["response_tokens,none"] == pytest.approx(sum(counts) / 4)
    assert res["response_tokens,none"] > 0  # re-tokenised decoded text: not always the 12 generated ids


def test_chat_template_off_and_thinking_metadata(tiny_qwen3):
    plain = lm_eval_tasks.load_dataset("aime24", pretrained=str(tiny_qwen3), chat_template=False)["test"][0]
    assert plain["input"] == plain["prompt"]
    assert plain["tokenizer"] == str(tiny_qwen3)  # lengths still in the model's tokens
    templated = lm_eval_tasks.load_dataset("aime24", tokenizer=str(tiny_qwen3), pretrained="ignored")["test"][
        0
    ]
    assert templated["input"].startswith("<|im_start|>user\n" + plain["prompt"])


def test_results_json_is_serialisable():
    tm = lm_eval_tasks.task_manager(k=1, include_defaults=False)
    out = simple_evaluate(model=CannedLM(), tasks=["sd_amc23"], task_manager=tm, limit=1, bootstrap_iters=0)
    json.dumps(out["results"], default=str)
    assert {f"marker_{m},none" for m in MARKERS} <= set(out["results"]["sd_amc23"])


def test_scoring_path_does_not_import_torch(tiny_qwen3):
    code = (
        "import sys\n"
        "from sd_bench.lm_eval_tasks import process_results\n"
        f"m = process_results({{'answer': '5', 'tokenizer': {str(tiny_qwen3)!r}}}, [['Wait. \\\\boxed{{5}}']])\n"
        "assert m['acc'] == 1.0 and m['response_tokens'] > 0, m\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_batched_token_counts_are_exact(tiny_qwen3, tmp_path):
    """All k responses are counted in one batch: each count equals the single-text count, even for a
    tokenizer.json saved with padding and truncation switched on (which would pad a batch to its longest)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    fast = Tokenizer.from_file(str(tiny_qwen3 / "tokenizer.json"))
    fast.enable_padding(pad_id=0, pad_token="<|endoftext|>")
    fast.enable_truncation(max_length=8)
    fast.save(str(tmp_path / "tokenizer.json"))
    texts = ["Wait. \\boxed{5}", "Hmm, maybe check it again: 2 + 3 = 5, so \\boxed{5}." * 3, "", "x"]
    exact = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert max(exact) > 8 and len(set(exact)) == 4
    assert lm_eval_tasks.batch_token_counter(str(tmp_path))(texts) == exact
    assert lm_eval_tasks.token_counter(str(tmp_path))(texts[1]) == exact[1]
    m = lm_eval_tasks.process_results({"answer": "5", "tokenizer": str(tmp_path)}, [texts])
    assert m["response_tokens"] == pytest.approx(sum(exact) / 4)
    e = [1, 3 * 3, 0, 0]  # wait; hmm + maybe + check, three times
    assert m["epistemic_count"] == pytest.approx(sum(e) / 4)
    assert m["epistemic_per_1k_tokens"] == pytest.approx(
        sum(1000 * x / max(n, 1) for x, n in zip(e, exact)) / 4
    )
    assert m["acc"] == pytest.approx(0.5)


# ---------------------------------------------------------------- metrics v2 (issues 8, 9, 12)


def test_pass_at_k_equals_the_closed_form():
    """Unbiased pass@k (Chen et al. 2021) against 1 - C(n-c, k) / C(n, k), including k < n."""
    from math import comb

    from sd_bench.sampling_metrics import PASS_AT_KS, pass_at_k, pass_at_ks

    for n in range(1, 17):
        for c in range(n + 1):
            for k in (k for k in PASS_AT_KS if k <= n):
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k)), (n, c, k)
    assert pass_at_ks(16, 4) == {k: pytest.approx(1 - comb(12, k) / comb(16, k)) for k in PASS_AT_KS}
    assert set(pass_at_ks(5, 1)) == {1, 2, 4}
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25) and pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 8)


def test_majority_vote():
    from sd_bench.sampling_metrics import majority_correct

    assert majority_correct(["1", "2", "2", None], [True, False, False, False]) == 0.0
    assert majority_correct(["1", " 1", "2", None], [True, True, False, False]) == 1.0  # normalised: 1 x2
    assert majority_correct(["2", "1"], [False, True]) == 0.0  # a tie goes to the answer seen first
    assert majority_correct([None, ""], [False, False]) == 0.0  # no answer, no vote


def test_score_responses_both_rules_canned():
    """Hand-computed per-problem metrics of 4 canned responses under both rules (no tokenizer: chars)."""
    responses = [
        "<think>Wait.</think> \\boxed{540}",  # right under both rules
        "thinking \\boxed{540} </think> so the answer is above",  # lone </think>: paper grades it whole
        "<think>hmm</think> \\boxed{}",  # an empty box: no answer
        "<think>x</think> \\boxed{12}",  # wrong
    ]
    m = lm_eval_tasks.score_responses(responses, "540")
    # math-verify rule: only response 0 is right; answers "540", None, "", "12"
    assert m["acc"] == pytest.approx(1 / 4) and m["pass_at_k"] == 1.0
    assert m["pass_at_1"] == pytest.approx(1 / 4) and m["pass_at_2"] == pytest.approx(1 - 3 / 6)
    assert m["pass_at_4"] == 1.0 and "pass_at_8" not in m
    assert m["answer_rate"] == pytest.approx(2 / 4)  # the empty box does not count
    assert m["maj_at_k"] == 1.0  # votes: 540 x1, 12 x1: the tie goes to 540, seen first
    # paper rule: responses 0 and 1 are right
    assert m["acc_paper"] == pytest.approx(2 / 4) and m["pass_at_k_paper"] == 1.0
    assert m["pass_at_2_paper"] == pytest.approx(1 - 1 / 6)
    assert m["maj_at_k_paper"] == 1.0  # votes: 540 x2, "" (no vote), 12 x1
    # thinking: first think block's content, or the text before a lone </think>
    thinking = ["Wait.", "thinking \\boxed{540}", "hmm", "x"]
    assert m["thinking_chars"] == pytest.approx(sum(map(len, thinking)) / 4)
    assert m["response_chars"] == pytest.approx(sum(map(len, responses)) / 4)


def test_thinking_tokens_are_exact(tiny_qwen3):
    """thinking_tokens = tokens of the think content counted alone (eval.py), in the model's tokenizer."""
    from transformers import AutoTokenizer

    from sd_bench.paper_answer import thinking_text

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    responses = [
        "<think>\nWait, let me check 2 + 3 again.\n</think>\n\n\\boxed{5}",
        "Hmm, maybe 5.\n</think>\n\\boxed{5}",
        "no thinking at all: \\boxed{4}",
    ]
    m = lm_eval_tasks.process_results({"answer": "5", "tokenizer": str(tiny_qwen3)}, [responses])
    n_think = [len(tok(thinking_text(r), add_special_tokens=False)["input_ids"]) for r in responses]
    n_all = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in responses]
    assert n_think[2] == 0 and min(n_think[:2]) > 0
    assert m["thinking_tokens"] == pytest.approx(sum(n_think) / 3)
    assert m["response_tokens"] == pytest.approx(sum(n_all) / 3)


def test_acc_stderr_over_problems():
    """lm-eval reports acc_stderr = sample standard deviation of the per-problem avg@k / sqrt(problems)."""
    import statistics

    tm = lm_eval_tasks.task_manager(k=2, max_gen_toks=64, include_defaults=False)
    out = simple_evaluate(
        model=CannedLM(),
        tasks=["sd_math500"],
        task_manager=tm,
        bootstrap_iters=10,
        samples={"sd_math500": [0, 1, 2]},
    )
    res = out["results"]["sd_math500"]
    per_problem = [PER_DOC[p][0] for p in PLAN["sd_math500"]]  # 0.5, 0.5, 0.0
    assert res["acc,none"] == pytest.approx(statistics.fmean(per_problem))
    assert res["acc_stderr,none"] == pytest.approx(statistics.stdev(per_problem) / len(per_problem) ** 0.5)
    # the paper's rule also reads the unclosed `\\boxed{GOLD` of pattern "none" (to the end): 0.5 per problem
    assert res["acc_paper,none"] == pytest.approx(0.5)
    assert "pass_at_2,none" in res and "pass_at_4,none" not in res


def test_fast_token_count_equals_tokenizers(tiny_qwen3, tmp_path):
    """sd_bench.token_count (tiktoken) gives the `tokenizers` counts, and falls back when they differ."""
    from tokenizers import Tokenizer

    from sd_bench import token_count

    hf = Tokenizer.from_file(str(tiny_qwen3 / "tokenizer.json"))

    def reference(texts):
        return [len(e.ids) for e in hf.encode_batch(list(texts), add_special_tokens=False)]

    fast = token_count.fast_counter(tiny_qwen3 / "tokenizer.json")
    assert fast is not None  # the tiny Qwen3 tokenizer is byte-level BPE: supported
    texts = token_count.PROBES + ["<think>a</think>b<|im_end|>", "  \n\n  x", "", "数学 " * 50, "e\u0301" * 9]
    assert fast(texts) == reference(texts)
    checked = token_count.checked_counter(tiny_qwen3 / "tokenizer.json", reference)
    assert checked is not reference and checked(texts) == reference(texts)
    # a reference that disagrees (as a tokenizer tiktoken cannot reproduce would): the reference is used
    off_by_one = lambda ts: [n + 1 for n in reference(ts)]
    assert token_count.checked_counter(tiny_qwen3 / "tokenizer.json", off_by_one) is off_by_one
    # an unsupported pipeline (a WordPiece model) gets no fast counter
    from tokenizers import models

    Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(tmp_path / "wp.json"))
    assert token_count.fast_counter(tmp_path / "wp.json") is None


def test_max_gen_toks_clamped_to_the_context(tiny_qwen3, caplog):
    """The tasks' 38,912 new tokens on a 4,096-token model: clamped, with one warning naming both numbers."""
    args = {"pretrained": str(tiny_qwen3)}
    assert lm_eval_tasks.model_context_length(args) == 4096  # tiny_model: max_position_embeddings
    lm_eval_tasks._warned.clear()
    with caplog.at_level("WARNING", logger="sd_bench.lm_eval_tasks"):
        assert lm_eval_tasks.clamp_max_gen_toks(None, args) == 4096 - 2048
        assert lm_eval_tasks.clamp_max_gen_toks(None, args) == 2048
    warnings = [r.getMessage() for r in caplog.records if "max_gen_toks" in r.getMessage()]
    assert len(warnings) == 1 and "38912" in warnings[0] and "4096" in warnings[0]
    assert lm_eval_tasks.clamp_max_gen_toks(1000, args) == 1000  # fits: unchanged
    assert lm_eval_tasks.clamp_max_gen_toks(None, {"pretrained": "no/such-model"}) is None  # unknown context
    assert lm_eval_tasks.clamp_max_gen_toks(None, {"max_length": "8192"}) == 8192 - 2048
    assert (
        lm_eval_tasks.clamp_max_gen_toks(None, {"max_model_len": "40960"}) is None
    )  # the paper's setting fits
    tm = lm_eval_tasks.task_manager(k=1, model_args=f"pretrained={tiny_qwen3}", include_defaults=False)
    assert "\n  max_gen_toks: 2048\n" in (Path(tm.include_path) / "_sd_math_template").read_text()
