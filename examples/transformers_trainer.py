"""NoiseMonitor in the ``transformers`` Trainer: a tiny randomly initialised GPT-2, character-level, on
the English text that ships with Python itself (``pydoc_data.topics``, the help pages). Nothing is
downloaded. Needs ``transformers``.

    python examples/transformers_trainer.py [--steps 40] [--out runs/monitor-gpt2]
"""

from __future__ import annotations

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from noiseprobe.monitor.hf import TransformersNoiseMonitor


class CharText(torch.utils.data.Dataset):
    """Fixed-length character windows of the Python help pages; ``labels`` = ``input_ids`` (the model
    shifts them), the last window padded and masked."""

    def __init__(self, length: int = 64, limit: int = 200_000) -> None:
        import pydoc_data.topics

        text = "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))[:limit]
        self.chars = sorted(set(text))
        ids = torch.tensor([self.chars.index(c) + 1 for c in text])  # 0 is padding
        pad = (-len(ids)) % length
        self.ids = torch.cat([ids, ids.new_zeros(pad)]).view(-1, length)
        self.length = length

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        mask = (ids != 0).long()
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def main(argv: list[str] | None = None) -> TransformersNoiseMonitor:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--out", default="runs/monitor-gpt2")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    data = CharText()
    config = GPT2Config(
        vocab_size=len(data.chars) + 1,
        n_positions=data.length,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = GPT2LMHeadModel(config)  # random weights: nothing downloaded
    monitor = TransformersNoiseMonitor(every=args.every, log_dir=args.out, metrics=["tr_sigma", "g_sq", "b_simple"])
    training = TrainingArguments(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    Trainer(model=model, args=training, train_dataset=data, callbacks=[monitor]).train()
    assert monitor.monitor is not None
    print(monitor.monitor.history.to_string(index=False))
    return monitor


if __name__ == "__main__":
    main()
