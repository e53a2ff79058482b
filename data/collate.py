"""Batch rows into padded tensors: the one collator every head family trains with."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from draftheads.data.dataset import Row


@dataclass
class Collator:
    """Right-pads a list of `Row`s into a batch.

    Unpacked rows get an `attention_mask`. Packed rows get `position_ids` instead and no attention
    mask: transformers then builds a block-diagonal causal mask from the restarts of the position
    ids. Padding of a packed batch is given positions 0.. of its own, so it forms a separate
    "document" that no real token attends to.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    """Round the batch length up (e.g. to 8 for tensor cores)."""

    def __call__(self, rows: list[Row]) -> dict:
        length = max(len(r.input_ids) for r in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = rows[0].position_ids is not None
        if any((r.position_ids is not None) != packed for r in rows):
            raise ValueError("cannot batch packed and unpacked rows together")
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        loss_mask = torch.zeros((len(rows), length), dtype=torch.long)
        batch: dict[str, torch.Tensor] = {"input_ids": ids, "loss_mask": loss_mask}
        if packed:
            positions = torch.zeros((len(rows), length), dtype=torch.long)
            batch["position_ids"] = positions
        else:
            attention = torch.zeros((len(rows), length), dtype=torch.long)
            batch["attention_mask"] = attention
        cached = getattr(rows[0], "features", None)
        if cached is not None:
            # Rows from the hidden-state cache: pad their features (and teacher top-k) alike.
            batch["features"] = {
                layer: torch.zeros((len(rows), length, value.shape[-1]), dtype=value.dtype) for layer, value in cached.items()
            }
            if rows[0].teacher_ids is not None:
                k = rows[0].teacher_ids.shape[-1]
                batch["teacher_ids"] = torch.zeros((len(rows), length, k), dtype=torch.long)
                batch["teacher_logprobs"] = torch.zeros((len(rows), length, k), dtype=torch.float32)
        for i, row in enumerate(rows):
            n = len(row.input_ids)
            if cached is not None:
                for layer, value in row.features.items():
                    batch["features"][layer][i, :n] = value
                if "teacher_ids" in batch:
                    batch["teacher_ids"][i, :n] = row.teacher_ids
                    batch["teacher_logprobs"][i, :n] = row.teacher_logprobs
            ids[i, :n] = torch.tensor(row.input_ids)
            loss_mask[i, :n] = torch.tensor(row.loss_mask)
            if packed:
                positions[i, :n] = torch.tensor(row.position_ids)
                positions[i, n:] = torch.arange(length - n)
            else:
                attention[i, :n] = 1
        return batch
