#!/usr/bin/python3
"""In-context recall probe: can a model copy a fact it was just told? Takes the single-fact
recall documents of tools/knowledge/synthetic.py's output ("<fact sentence>\\nQ: ...\\nA: <answer>"),
gives the model everything up to "A:" and compares its greedy answer with the gold one. A model
without induction heads scores ~0; reading a memory needs the same skill, so this is a cheap
stage-1 check before stage 2. Use documents the model never trained on (e.g. stage 2's invented
facts for a stage-1 model, which trains on another seed's).

    /usr/bin/python3 tools/knowledge/recall_probe.py MODEL.gguf [--docs data/knowledge-synth/train.jsonl]
        [--n 40] [--m3 build/release/m3]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--docs", default="data/knowledge-synth/train.jsonl")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--m3", default="build/release/m3")
    a = ap.parse_args(argv)
    docs = []
    with open(a.docs, encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if text.count("Q: ") == 1 and "\nA: " in text:
                docs.append(text)
            if len(docs) >= a.n:
                break
    right = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "prompt.txt")
        for text in docs:
            cut = text.rindex("\nA: ")
            prompt, gold = text[:cut + 3], text[cut + 4:].strip()
            with open(path, "w", encoding="utf-8") as f:
                f.write(prompt)
            out = subprocess.run([a.m3, "generate", "-m", a.model, "-f", path, "-n", "12", "--greedy", "--stop", "\\n",
                                  "-t", "1"], capture_output=True, text=True, check=True).stdout
            answer = out[len(prompt):].strip() if out.startswith(prompt) else out.strip().split("\n")[-1]
            right += answer == gold
    print("%s: %d/%d recalled exactly" % (a.model, right, len(docs)))


if __name__ == "__main__":
    main(sys.argv[1:])
