#!/usr/bin/python3
"""Golden tokenizations for tests/test_tokenizer.cpp, from Python's sentencepiece.

m3 tokenizes through libsentencepiece; this script asks the *Python* binding (Debian's
python3-sentencepiece, the same upstream version) what the ids of a set of strings are, so the C++
wrapper (UTF-8 checks, BOS/EOS handling, id conversions, the streaming decoder) is checked against
an independent caller of the library rather than against itself.

Without --model it also trains the test model, with the exact recipe of m3::Tokenizer::train
(src/text/tokenizer.cpp), on the embedded corpus; test_tokenizer.cpp retrains in C++ and expects
the same vocabulary, which pins the recipe on both sides.

Writes tests/data/tokenizer_test.model (the serialized ModelProto) and
tests/data/tokenizer_golden.json. Run with Debian's interpreter:

    /usr/bin/python3 tools/reference/tokenizer_golden.py [--model PATH] [--vocab-size 512]
"""
import argparse
import hashlib
import io
import json
import os
import sys

import sentencepiece as spm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "data", "embedded", "moby-dick.txt")
OUT_MODEL = os.path.join(ROOT, "tests", "data", "tokenizer_test.model")
OUT_JSON = os.path.join(ROOT, "tests", "data", "tokenizer_golden.json")

# Mirrors m3::Tokenizer::train. Keep the two in step: the C++ test retrains and compares.
SEED = 42
RECIPE = dict(
    model_type="bpe",
    byte_fallback=True,
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    character_coverage=0.9995,
    split_digits=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    train_extremely_large_corpus=False,
    max_sentence_length=16384,
    input_sentence_size=2000000,
    shuffle_input_sentence=True,
    minloglevel=2,
)

# Strings that exercise what a tokenizer gets wrong: spaces at the ends and in runs, tabs and
# newlines (never seen in one-line-per-paragraph training text), digits (split one by one),
# characters outside the vocabulary (byte fallback), a literal U+FFFD, a literal "<s>" (plain
# text, not BOS), and the Memory³ reference prefix.
TEXTS = [
    "",
    "Call me Ishmael.",
    "Reference:",
    " leading space",
    "trailing space ",
    "  two  spaces   three",
    "tab\there\nnewline\r\nCRLF",
    "The year 1851; 3.14159 and 1,000,000 whales.",
    "café naïve résumé Ahab’s “quoted” — dash",
    "中文字符 and 日本語 and 한국어",
    "emoji 😀🐳 and flags 🇫🇷",
    "combining: e\u0301 a\u0308",
    "literal replacement \ufffd char",
    "<s>not a control token</s>",
    "\u2581 the space symbol itself",
    "ALL CAPS, MiXeD cAsE, under_score, hy-phen, email@example.com",
    "Whenever I find myself growing grim about the mouth; whenever it is a damp, drizzly November in my soul",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="use this serialized model instead of training one")
    ap.add_argument("--vocab-size", type=int, default=512)
    args = ap.parse_args()

    if args.model:
        with open(args.model, "rb") as f:
            proto = f.read()
    else:
        spm.set_random_generator_seed(SEED)
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(input=CORPUS, model_writer=buf, vocab_size=args.vocab_size,
                                       num_threads=1, **RECIPE)
        proto = buf.getvalue()

    sp = spm.SentencePieceProcessor(model_proto=proto)
    cases = []
    for text in TEXTS:
        ids = sp.encode(text)
        cases.append({
            "text": text,
            "ids": ids,
            "pieces": [sp.id_to_piece(i) for i in ids],
            "decoded": sp.decode(ids),
        })
    golden = {
        "generator": "tools/reference/tokenizer_golden.py",
        "sentencepiece_version": spm.__version__,
        "model": os.path.relpath(OUT_MODEL, ROOT),
        "model_sha256": hashlib.sha256(proto).hexdigest(),
        "trained": None if args.model else {"corpus": os.path.relpath(CORPUS, ROOT), "vocab_size": args.vocab_size,
                                            "seed": SEED},
        "vocab_size": sp.get_piece_size(),
        "bos_id": sp.bos_id(), "eos_id": sp.eos_id(), "unk_id": sp.unk_id(),
        "prefix_ids": [sp.bos_id()] + sp.encode("Reference:"),
        "cases": cases,
    }
    with open(OUT_MODEL, "wb") as f:
        f.write(proto)
    with open(OUT_JSON, "w", encoding="utf-8") as f:
        json.dump(golden, f, indent=1, ensure_ascii=True)
        f.write("\n")
    print(f"wrote {OUT_MODEL} ({len(proto)} bytes) and {OUT_JSON} ({len(cases)} cases)", file=sys.stderr)


if __name__ == "__main__":
    main()
