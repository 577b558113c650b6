#!/usr/bin/env python
"""Train a small byte-level BPE tokenizer offline and save it as a HF tokenizer dir.

    venv/bin/python make_tokenizer.py [--out tokenizer] [--vocab-size 4096]

Training text: the Python standard library's own .py sources of the running
interpreter (local, deterministic for a given Python build; no download). The result
loads with ``transformers.AutoTokenizer.from_pretrained(<dir>)`` under
``HF_HUB_OFFLINE=1`` (what the upstream benchmark client does), and with
``tokenizers.Tokenizer.from_file(<dir>/tokenizer.json)`` (what the simulated engine
does with ``engine_kwargs={"tokenizer": <dir>}``). Idempotent: skips training if the
directory already holds a tokenizer with the requested vocab size (use --force).
"""

import argparse
import glob
import json
import os
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))


def training_files(limit_bytes):
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    out, total = [], 0
    for f in files:
        size = os.path.getsize(f)
        out.append(f)
        total += size
        if total >= limit_bytes:
            break
    return out, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "tokenizer"))
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--train-mb", type=float, default=8.0)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()

    meta_path = os.path.join(args.out, "sim_tokenizer_meta.json")
    if not args.force and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("vocab_size") == args.vocab_size:
            print(
                f"tokenizer already at {args.out} (vocab {args.vocab_size}); --force to redo"
            )
            return

    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    files, total = training_files(int(args.train_mb * 1e6))
    print(
        f"training byte-level BPE (vocab {args.vocab_size}) on {len(files)} stdlib "
        f"files, {total / 1e6:.1f} MB"
    )
    bpe = ByteLevelBPETokenizer()
    bpe.train(
        files=files,
        vocab_size=args.vocab_size,
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
    )

    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=1 << 20,
    )
    os.makedirs(args.out, exist_ok=True)
    fast.save_pretrained(args.out)
    with open(meta_path, "w") as f:
        json.dump(
            {"vocab_size": args.vocab_size, "files": len(files), "bytes": total}, f
        )

    # Check it loads the way the benchmark loads it.
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.out)
    ids = tok.encode("def hello(world):\n    return 42", add_special_tokens=False)
    print(
        f"saved to {args.out}: {type(tok).__name__}, vocab_size={tok.vocab_size}, "
        f"sample -> {len(ids)} tokens"
    )


if __name__ == "__main__":
    main()
