"""Train the byte-level BPE tokenizer and encode the corpus splits to token ids.

Usage (after ``python -m specviz.train.corpus --out .train_data``)::

    python -m specviz.train.tokenizer --data .train_data

Trains a byte-level BPE (vocab 8192, special tokens ``<unk> <s> </s> <pad>``) on the *train*
split only, saves it in Hugging Face format under ``<data>/tokenizer/`` (``tokenizer.json`` +
``tokenizer_config.json``, loadable with ``AutoTokenizer``), checks that every document of
every split round-trips exactly, and writes ``<data>/{train,val,heldout}.u16.npy``: the
documents' token ids concatenated with ``</s>`` after each document.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from .corpus import read_docs

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
VOCAB_SIZE = 8192
SPLITS = ("train", "val", "heldout")


def train_tokenizer(texts, vocab_size: int = VOCAB_SIZE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok


def to_hf(tok, max_len: int = 2048):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=max_len,
        clean_up_tokenization_spaces=False,
    )


def encode_docs(tok, texts, eos_id: int) -> np.ndarray:
    encs = tok.encode_batch(texts, add_special_tokens=False)
    ids = []
    for e in encs:
        ids.extend(e.ids)
        ids.append(eos_id)
    arr = np.asarray(ids, dtype=np.int64)
    assert arr.max() < 65536
    return arr.astype(np.uint16)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=".train_data", type=Path)
    ap.add_argument("--vocab-size", default=VOCAB_SIZE, type=int)
    args = ap.parse_args(argv)

    docs = {s: read_docs(args.data / f"docs_{s}.jsonl") for s in SPLITS}
    t0 = time.time()
    tok = train_tokenizer(docs["train"], args.vocab_size)
    print(f"trained BPE vocab={tok.get_vocab_size()} in {time.time() - t0:.1f}s")
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))

    out_dir = args.data / "tokenizer"
    hf = to_hf(tok)
    hf.save_pretrained(str(out_dir))

    # reload through AutoTokenizer exactly as users will, and check exact round-trips
    from transformers import AutoTokenizer

    hf2 = AutoTokenizer.from_pretrained(str(out_dir))
    eos_id = hf2.eos_token_id
    stats = {}
    for s in SPLITS:
        arr = encode_docs(tok, docs[s], eos_id)
        bad = 0
        for t in docs[s]:
            ids = tok.encode(t, add_special_tokens=False).ids
            if tok.decode(ids, skip_special_tokens=False) != t:
                bad += 1
        if s != "train":  # AutoTokenizer path on the smaller splits
            for t in docs[s]:
                if hf2.decode(hf2(t, add_special_tokens=False)["input_ids"]) != t:
                    bad += 1
        np.save(args.data / f"{s}.u16.npy", arr)
        nbytes = sum(len(t.encode()) for t in docs[s])
        stats[s] = {
            "n_docs": len(docs[s]),
            "n_tokens": int(arr.size),
            "bytes": nbytes,
            "bytes_per_token": nbytes / arr.size,
            "roundtrip_failures": bad,
            "ids_sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
        }
        print(f"{s:8s} docs={len(docs[s]):5d} tokens={arr.size:9d} bytes/token={nbytes / arr.size:.3f} roundtrip_failures={bad}")
        assert bad == 0, f"{bad} documents of split {s} do not round-trip"
    tok_sha = hashlib.sha256((out_dir / "tokenizer.json").read_bytes()).hexdigest()
    meta = {
        "vocab_size": tok.get_vocab_size(),
        "special_tokens": {s: i for i, s in enumerate(SPECIAL_TOKENS)},
        "tokenizer_json_sha256": tok_sha,
        "splits": stats,
    }
    (args.data / "tokens_meta.json").write_text(json.dumps(meta, indent=1))
    print(f"tokenizer.json sha256 {tok_sha}")


if __name__ == "__main__":
    main()
