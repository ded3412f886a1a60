"""CLIPScore / RefCLIPScore: the formula on hand-made embeddings, and the CLIP plumbing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from library_helpers import score_batch
from PIL import Image

from src.eval.clipscore import clip_s, ref_clip_s
from src.models.clip import embed_images, embed_texts, load_clip


def test_formula_matches_hand_computation() -> None:
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    candidate = torch.tensor([[0.6, 0.8], [-0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    references = [
        torch.tensor([[0.0, 1.0], [1.0, 0.0]]),  # cos 0.8 and 0.6: the best counts
        torch.tensor([[-1.0, 0.0]]),  # cos 0.6, but CLIP-S is 0
        torch.tensor([[0.6, -0.8]]),  # cos -0.28, clamped to 0
        torch.tensor([[1.0, 0.0]]),  # cos 0 and CLIP-S 0: H-mean of two zeros is 0
    ]
    clip = clip_s(image, candidate)
    # 2.5 * max(cos, 0): cos 0.6, -0.6 (-> 0), 0.8, 0.0
    assert clip.tolist() == pytest.approx([1.5, 0.0, 2.0, 0.0])
    ref_clip = ref_clip_s(clip, candidate, references)
    # harmonic mean 2ab / (a + b) of CLIP-S and the best clamped candidate-reference cosine
    assert ref_clip.tolist() == pytest.approx([2 * 1.5 * 0.8 / (1.5 + 0.8), 0.0, 0.0, 0.0])
    assert not torch.isnan(ref_clip).any()


def test_score_batch_embeds_with_prefix(tiny_models: dict[str, Path]) -> None:
    model, processor = load_clip(str(tiny_models["clip"]), torch.device("cpu"))
    # The random tiny CLIP puts these images and texts at positive cosines (asserted below),
    # so the scores are not all clamped zeros.
    images = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (30, 40), (30, 30, 200))]
    candidates = ["a red circle.", "a small blue square"]
    references = [["a large red circle.", "a red circle on a white background."],
                  ["a blue square."]]
    scores = score_batch(model, processor, images, candidates, references)

    image_emb = embed_images(model, processor, images)
    cand_emb = embed_texts(model, processor, [f"A photo depicts {c}" for c in candidates])
    cosine = (image_emb * cand_emb).sum(-1)
    expected_clip = 2.5 * cosine.clamp(min=0)
    assert (expected_clip > 0).all()
    assert scores.clipscore == pytest.approx(expected_clip.tolist(), abs=1e-6)
    best_ref = torch.stack([
        (embed_texts(model, processor, [f"A photo depicts {r}" for r in refs]) @ cand).max()
        for cand, refs in zip(cand_emb, references, strict=True)
    ]).clamp(min=0)
    total = expected_clip + best_ref
    expected_ref = torch.where(total > 0, 2 * expected_clip * best_ref / total, 0.0)
    assert (expected_ref > 0).all()
    assert scores.refclipscore == pytest.approx(expected_ref.tolist(), abs=1e-6)


def test_every_candidate_needs_a_reference(tiny_models: dict[str, Path]) -> None:
    model, processor = load_clip(str(tiny_models["clip"]), torch.device("cpu"))
    with pytest.raises(ValueError, match="at least one reference"):
        score_batch(model, processor, [Image.new("RGB", (32, 32))], ["a circle"], [[]])
