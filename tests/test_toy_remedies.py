"""The remedies of the toy ablations (toy_manifest.yaml group `ablations`) on the toy vocabulary:
`loss.exclude_markers` changes exactly the marker tokens' contributions, and the live-hedge mask
(`loss.marker_mass_threshold`) finds the toy world's `wait` token."""

from __future__ import annotations

import pytest
import torch

from sd_bench.train.losses import marker_token_mask, sd_loss_from_hidden


def test_marker_token_mask_masks_exactly_the_marker_tokens():
    assert marker_token_mask(["A", ":", "1", "wait", "1", "+"]) == [1, 1, 1, 0, 1, 1]
    # a marker split over tokens masks every token it touches; case-insensitive; substrings count (E(y))
    assert marker_token_mask(["I", " wa", "it", " ok", "Checking"]) == [1, 0, 0, 1, 0]
    assert marker_token_mask(["no", " hedge"]) == [1, 1]


def test_exclude_markers_changes_only_the_marker_tokens_contributions():
    torch.manual_seed(0)
    n, h, v = 6, 8, 23
    hs, ht = torch.randn(n, h), torch.randn(n, h)
    w = torch.randn(v, h, requires_grad=True)
    ids = torch.randint(0, v, (n,))
    old = torch.randn(n) * 0.1 - 2.0
    mask = torch.tensor(marker_token_mask(["A", ":", "wait", "1", "Wait", ";"]))

    def loss(m):
        out, _ = sd_loss_from_hidden(hs, w, ht, w.detach(), ids, m, old, alpha=0.5, top_k=8, num_tokens=n)
        return out

    full, remedied = loss(torch.ones(n)), loss(mask)
    marker_part = sum(loss(torch.nn.functional.one_hot(torch.tensor(t), n).float()) for t in (2, 4))
    assert float(full - remedied) == pytest.approx(float(marker_part), rel=1e-5, abs=1e-7)
    for t in (0, 1, 3, 5):  # every other token contributes exactly as before (same token-mean denominator)
        one = torch.nn.functional.one_hot(torch.tensor(t), n).float()
        assert float(loss(one * mask)) == pytest.approx(float(loss(one)), rel=1e-6)


def test_marker_mass_finds_the_toy_wait_token():
    from transformers import AutoTokenizer

    from sd_bench.toy import BASE_DIR
    from sd_bench.train.losses import marker_mass_from_hidden, marker_token_ids

    tok = AutoTokenizer.from_pretrained(BASE_DIR)
    ids = marker_token_ids(tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=True))
    assert ids == tok.convert_tokens_to_ids(["W"]) or [tok.decode([i]) for i in ids] == ["wait"]
    w = torch.zeros(len(tok), 2)
    w[ids[0], 0] = 10.0  # position 0 prefers the marker, position 1 is uniform
    mass = marker_mass_from_hidden(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), w, torch.tensor(ids), chunk_size=1)
    assert mass[0] > 0.99 and mass[1] == pytest.approx(1 / len(tok), rel=1e-5)
