#!/usr/bin/python3
"""Which of a reference's tokens its memory keeps, against whether the model answered right.

For every question of an `m3 eval --memories 1` run whose one retrieved reference is the gold one
(docs/results.md, "Fewer memories"), reads that reference's memory (`m3 bank show --json`: the
kept positions of every (memory layer, KV head)) and finds the answer's and the subject's tokens
in it (`m3 tokenize`; a span's tokens are counted by tokenizing the text up to its start and up
to its end). Prints, for the right and the wrong answers: how many heads keep the whole subject
and the whole answer, whether every answer token is kept by some head, and in how many memory
layers the heads together keep the whole answer, by answer length in tokens.

    /usr/bin/python3 tools/knowledge/kept_answer_tokens.py --results OUT/qa-1/results.json \\
        --bank OUT/bank [--model models/memory3-tiny-kb.gguf] [--m3 build/release/m3]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", required=True, help="results.json of m3 eval --memories 1 (QA)")
    ap.add_argument("--bank", required=True, help="the bank that run read")
    ap.add_argument("--model", default="models/memory3-tiny-kb.gguf")
    ap.add_argument("--m3", default="build/release/m3")
    ap.add_argument("--facts", default="knowledge/facts.jsonl")
    a = ap.parse_args(argv)
    facts = {}
    with open(a.facts, encoding="utf-8") as f:
        for line in f:
            fact = json.loads(line)
            facts[fact["id"]] = fact

    def n_tokens(text):
        if not text:
            return 0
        r = subprocess.run([a.m3, "tokenize", "-m", a.model, "-p", text, "--ids"], capture_output=True, text=True,
                           check=True)
        return len(r.stdout.split())

    info = subprocess.run([a.m3, "bank", "info", a.bank], capture_output=True, text=True, check=True).stdout
    shape = re.search(r"Lm=(\d+) G=(\d+) K=(\d+)", info)
    if not shape:
        sys.exit("%s: no 'Lm=.. G=.. K=..' memory shape in m3 bank info" % a.bank)
    n_layers, heads_per_layer, k = (int(x) for x in shape.groups())
    with open(a.results, encoding="utf-8") as f:
        qa = [r for r in json.load(f)["results"] if r["task"] == "qa" and r["mode"] == "memory"]
    if not qa:
        sys.exit("%s: no QA result in memory mode" % a.results)
    rows = collections.defaultdict(list)
    for item in qa[0]["items"]:
        fact = facts.get(item["id"][2:])  # q:<fact id>
        if fact is None or not item["references"]:
            continue
        ref = item["references"][0]
        text = ref["text"]
        if item["gold"][0] not in text:
            continue  # the one memory read does not hold the answer
        s0, a0 = text.find(fact["subject"]), text.find(fact["answer"])
        if s0 < 0 or a0 < 0:
            continue
        sb, se = n_tokens(text[:s0].rstrip()), n_tokens(text[:s0 + len(fact["subject"])])
        ab, ae = n_tokens(text[:a0].rstrip()), n_tokens(text[:a0 + len(fact["answer"])])
        show = subprocess.run([a.m3, "bank", "show", a.bank, str(ref["id"]), "--json"], capture_output=True, text=True,
                              check=True)
        record = json.loads(show.stdout)
        positions = record["positions"]  # [layers][kv heads][kept], flat
        if len(positions) != n_layers * heads_per_layer * k:
            sys.exit("reference %d: %d kept positions, the bank's shape says %d" %
                     (ref["id"], len(positions), n_layers * heads_per_layer * k))
        heads = [set(positions[i:i + k]) for i in range(0, len(positions), k)]
        answer = range(ab, ae)
        union = set().union(*heads)
        layers_whole = sum(all(any(p in heads[l * heads_per_layer + g] for g in range(heads_per_layer)) for p in answer)
                           for l in range(n_layers)) / n_layers
        rows["right" if item["exact"] else "wrong"].append({
            "subject_whole": sum(all(p in h for p in range(sb, se)) for h in heads) / len(heads),
            "answer_whole": sum(all(p in h for p in answer) for h in heads) / len(heads),
            "answer_covered": all(p in union for p in answer),
            "layers_whole": layers_whole,
            "answer_tokens": ae - ab,
            "reference_tokens": record["n_tokens"],
        })
    for outcome in ("right", "wrong"):
        v = rows[outcome]
        if not v:
            continue
        mean = lambda key: sum(float(r[key]) for r in v) / len(v)  # noqa: E731
        print("%s: %d questions; reference %.1f tokens, answer %.1f; heads keeping the whole subject %.2f, the whole "
              "answer %.2f; every answer token kept by some head %.2f; layers whose heads together keep the whole "
              "answer %.2f" % (outcome, len(v), mean("reference_tokens"), mean("answer_tokens"), mean("subject_whole"),
                               mean("answer_whole"), mean("answer_covered"), mean("layers_whole")))
        for n in sorted(set(r["answer_tokens"] for r in v)):
            sub = [r for r in v if r["answer_tokens"] == n]
            print("  answer of %d tokens: %3d questions, layers keeping it whole %.2f" %
                  (n, len(sub), sum(r["layers_whole"] for r in sub) / len(sub)))


if __name__ == "__main__":
    main(sys.argv[1:])
