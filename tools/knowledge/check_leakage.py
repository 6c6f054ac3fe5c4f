#!/usr/bin/python3
"""Leakage check for m3's knowledge data (knowledge/, built by tools/knowledge/build.py).

Fails (exit 1), naming the fact and the document, when
  - a memory_only or distractor fact has its subject and answer in one training document
    (whole-word, case-insensitive: tools/knowledge/common.py) of knowledge/train.jsonl, or of the
    stage-1 corpus CORPUS/*.jsonl when that folder exists (else the corpus check is SKIPPED, and
    says so);
  - a memory_only question prompt appears in train.jsonl;
  - a question's fact is missing from facts.jsonl or kb.jsonl, is of the wrong slice, or its kb
    sentence lacks the subject or " " + answer; a multiple-choice row's gold is not its answer;
  - ids repeat within facts, kb, train, heldout, a question file or an mc file.

Usage: check_leakage.py [--knowledge knowledge] [--corpus data/corpus]
       check_leakage.py --selftest   (runs build.py --selftest, which plants leaks and expects
                                       this check to fail)
Standard library only.
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
MAX_REPORT = 20


def main(argv):
    if argv == ["--selftest"]:
        return subprocess.call([sys.executable, os.path.join(HERE, "build.py"), "--selftest"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--knowledge", default=os.path.join(ROOT, "knowledge"))
    ap.add_argument("--corpus", default=os.path.join(ROOT, "data", "corpus"))
    a = ap.parse_args(argv)
    k = a.knowledge
    t0 = time.time()
    problems = []

    def problem(msg):
        problems.append(msg)
        if len(problems) <= MAX_REPORT:
            print("LEAK/ERROR:", msg)

    def load(name):
        p = os.path.join(k, name)
        if not os.path.isfile(p):
            problem("missing file %s" % p)
            return []
        return common.read_jsonl(p)

    facts = load("facts.jsonl")
    kb = load("kb.jsonl")
    train = load("train.jsonl")
    heldout = load("heldout.jsonl")
    qfiles = {s: load("questions/%s.jsonl" % s) for s in ("trained", "memory_only")}
    mcfiles = {s: load("mc/%s.jsonl" % s) for s in ("trained", "memory_only")}

    for name, rows in [("facts.jsonl", facts), ("kb.jsonl", kb), ("train.jsonl", train),
                       ("heldout.jsonl", heldout)] + [("questions/%s.jsonl" % s, r) for s, r in qfiles.items()] \
            + [("mc/%s.jsonl" % s, r) for s, r in mcfiles.items()]:
        seen = set()
        for r in rows:
            if r.get("id") in seen:
                problem("%s: duplicate id %r" % (name, r.get("id")))
            seen.add(r.get("id"))

    fact_by_id = {f["id"]: f for f in facts}
    kb_by_id = {d["id"]: d for d in kb}
    protected = [f for f in facts if f["slice"] in ("memory_only", "distractor")]
    mem = [f for f in facts if f["slice"] == "memory_only"]
    print("check_leakage: %d facts (%d memory_only, %d distractor), %d kb documents, %d training documents" % (
        len(facts), len(mem), len(protected) - len(mem), len(kb), len(train)))
    for f in facts:
        if f["id"] not in kb_by_id:
            problem("fact %s is not in kb.jsonl" % f["id"])
    for s, qs in qfiles.items():
        for q in qs:
            f = fact_by_id.get(q.get("fact_id"))
            if f is None:
                problem("question %s: fact %r not in facts.jsonl" % (q.get("id"), q.get("fact_id")))
                continue
            if f["slice"] != s:
                problem("question %s: fact %s is %s, asked in the %s set" % (q["id"], f["id"], f["slice"], s))
            d = kb_by_id.get(f["id"])
            if d is None:
                problem("question %s: fact %s has no kb.jsonl document" % (q["id"], f["id"]))
            elif (" " + f["answer"]) not in d["text"] or f["subject"].lower() not in d["text"].lower():
                problem("kb document %s lacks the subject or ' %s'" % (d["id"], f["answer"]))
            if q.get("answer") != f["answer"]:
                problem("question %s: answer %r != fact answer %r" % (q["id"], q.get("answer"), f["answer"]))
    for s, rows in mcfiles.items():
        for r in rows:
            f = fact_by_id.get(r.get("fact_id"))
            if f is None or r["choices"][r["gold"]] != " " + f["answer"] or len(set(r["choices"])) != len(r["choices"]):
                problem("mc row %s: gold choice is not the fact's answer, or choices repeat" % r.get("id"))

    # Memory-only question prompts must not occur in the training text.
    prompts = {q["question"]: q["fact_id"] for q in qfiles["memory_only"]}
    for d in train:
        t = d["text"]
        if "Q: " in t:
            for part in t.split("Q: ")[1:]:
                p = "Q: " + part.split("\nA:")[0] + "\nA:"
                if p in prompts:
                    problem("memory_only question of %s appears in training document %s" % (prompts[p], d["id"]))

    scanner = common.LeakScanner([(f["id"], f["subject"], f["answer"]) for f in protected])
    hits, n = common.scan_documents(scanner, ((d["id"], d["text"]) for d in train))
    for fid, docs in sorted(hits.items()):
        f = fact_by_id[fid]
        problem("%s fact %s (%r -> %r) co-occurs in %s document %s" % (
            f["slice"], fid, f["subject"], f["answer"], "knowledge/train.jsonl", docs[0]))
    print("check_leakage: train.jsonl checked: %d documents, %d leaking facts" % (n, len(hits)))

    files = common.corpus_files(a.corpus) if os.path.isdir(a.corpus) else []
    if not files:
        print("check_leakage: corpus SKIPPED (%s has no *.jsonl)" % a.corpus)
    else:
        total = 0
        nleak = 0
        for p in files:
            hits, n = common.scan_documents(scanner, common.iter_jsonl_docs(p))
            total += n
            for fid, docs in sorted(hits.items()):
                f = fact_by_id[fid]
                nleak += 1
                problem("%s fact %s (%r -> %r) co-occurs in corpus %s document %s" % (
                    f["slice"], fid, f["subject"], f["answer"], os.path.basename(p), docs[0]))
        print("check_leakage: corpus checked: %s, %d files, %d documents, %d leaking facts" % (
            a.corpus, len(files), total, nleak))
    if problems:
        print("check_leakage: FAILED, %d problem(s)%s (%.1f s)" % (
            len(problems), "" if len(problems) <= MAX_REPORT else ", first %d shown" % MAX_REPORT, time.time() - t0))
        return 1
    print("check_leakage: OK (%.1f s)" % (time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
