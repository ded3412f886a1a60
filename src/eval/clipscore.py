"""CLIPScore and RefCLIPScore (Hessel et al., 2021), reference-free caption quality.

    CLIP-S(c, v)       = 2.5 * max(cos(E_img(v), E_txt("A photo depicts " + c)), 0)
    RefCLIP-S(c, R, v) = H-mean(CLIP-S(c, v), max(max_r cos(E_txt(c), E_txt(r)), 0))

As in the authors' code, candidates and references are embedded with the same prefix,
and the harmonic mean of two zeros is 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import CLIPModel, ProcessorMixin

from src.data.images import ImageDataset
from src.data.skips import Skip
from src.models.clip import embed_pixels, embed_texts, image_pixels

logger = logging.getLogger(__name__)

CLIP_WEIGHT = 2.5
TEXT_PREFIX = "A photo depicts "


@dataclass(frozen=True)
class ClipScores:
    clipscore: list[float]  # per candidate, in input order
    refclipscore: list[float]


def clip_s(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Per-row CLIP-S of L2-normalised (n, d) image and candidate-text embeddings."""
    return CLIP_WEIGHT * (image_emb * text_emb).sum(dim=-1).clamp(min=0)


def ref_clip_s(clip_scores: torch.Tensor, candidate_emb: torch.Tensor,
               reference_embs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-row RefCLIP-S from CLIP-S (n,), candidates (n, d) and each row's references (k_i, d)."""
    ref_sim = torch.stack([
        (refs @ cand).max().clamp(min=0) for cand, refs in zip(candidate_emb, reference_embs,
                                                                 strict=True)
    ])
    total = clip_scores + ref_sim
    harmonic = 2 * clip_scores * ref_sim / total.where(total > 0, torch.ones_like(total))
    return harmonic.where(total > 0, torch.zeros_like(total))


def with_prefix(caption: str) -> str:
    return TEXT_PREFIX + caption.strip()


def score_pixels(model: CLIPModel, processor: ProcessorMixin, pixel_values: torch.Tensor,
                 candidates: Sequence[str], references: Sequence[Sequence[str]]) -> ClipScores:
    """CLIP-S and RefCLIP-S of one batch of (preprocessed image, candidate, references)."""
    if not len(pixel_values) == len(candidates) == len(references):
        raise ValueError("images, candidates and references must have the same length")
    if any(not refs for refs in references):
        raise ValueError("every candidate needs at least one reference for RefCLIP-S")
    image_emb = embed_pixels(model, pixel_values).cpu()
    candidate_emb = embed_texts(model, processor, [with_prefix(c) for c in candidates]).cpu()
    flat_refs = [with_prefix(r) for refs in references for r in refs]
    ref_emb = embed_texts(model, processor, flat_refs).cpu()
    reference_embs = torch.split(ref_emb, [len(refs) for refs in references])
    clip = clip_s(image_emb, candidate_emb)
    ref_clip = ref_clip_s(clip, candidate_emb, reference_embs)
    return ClipScores(clip.tolist(), ref_clip.tolist())


class _Collate:
    """Runs in the DataLoader workers: CLIP preprocessing of the images that loaded."""

    def __init__(self, processor: ProcessorMixin) -> None:
        self.processor = processor

    def __call__(self, samples: Sequence[tuple[int, Image.Image | Skip]],
                 ) -> tuple[list[int], torch.Tensor | None]:
        good = [(image_id, image) for image_id, image in samples if isinstance(image, Image.Image)]
        for _, image in samples:
            if isinstance(image, Skip):
                logger.warning("no CLIPScore for image %s", image)
        pixels = image_pixels(self.processor, [image for _, image in good]) if good else None
        return [image_id for image_id, _ in good], pixels


def score_images(model: CLIPModel, processor: ProcessorMixin, images: ImageDataset,
                 captions: Mapping[int, str], references: Mapping[int, Sequence[str]], *,
                 batch_size: int, num_workers: int,
                 progress: bool = True) -> dict[int, tuple[float, float]]:
    """(CLIP-S, RefCLIP-S) per image id; images that fail to load are left out (logged)."""
    loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_Collate(processor))
    scores: dict[int, tuple[float, float]] = {}
    for ids, pixels in tqdm(loader, desc="clipscore", unit="batch", disable=not progress):
        if pixels is None:
            continue
        part = score_pixels(model, processor, pixels, [captions[i] for i in ids],
                            [references[i] for i in ids])
        scores.update(zip(ids, zip(part.clipscore, part.refclipscore, strict=True), strict=True))
    return scores
