#!/usr/bin/python3
"""Invented facts for stage-2 training: the same relations and templates as the real facts
(build.py), with made-up subjects and answers ("The capital of Velmorra is Quistane.").

Why: a small model that sees the same few thousand real facts again and again learns them in its
weights and never needs its memories. Invented facts are too many to memorize, and each appears in
the training text only a few times, so the cheapest way to predict their answers is to read them
from the memory the chunk retrieved: stage 2 then teaches the skill of reading memory. They
are never asked in the evaluation; no invented subject is a real one.

    /usr/bin/python3 tools/knowledge/synthetic.py --knowledge knowledge --out DIR [--facts N]

writes DIR/kb.jsonl (one reference per invented fact, the kb template) and DIR/train.jsonl:
documents of 4-8 renderings (the QA format and prose), and "recall" documents (RECALL_SHARE of
the facts) that state 1-3 facts with their kb sentence and then ask about them in the QA format,
and "copy" documents that repeat a list of invented words. A tiny model pretrained on a few
million tokens has no induction heads yet (it cannot continue "A B C. A B" with "C"), and without
them it can neither copy from its context nor read a memory; repeated lists are the classic fast
way to grow them, recall documents then teach looking a fact up in context, and reading a memory
is the same attention over keys and values that came from a reference (the window that states a
fact never reads that fact's memory: its overlap is > 0.9). Deterministic (fixed seed).

--ask-share F puts F of the facts (after the recall ones) in "ask" documents: 2-5 questions in the
QA format whose facts are stated nowhere in the text, only in the knowledge base. A question's
overlap with its reference is ~0.7, under the 0.9 leak limit, so the chunk that asks reads the
reference that answers, and reading it is the only way to predict the answer.

--ask-one-relation makes each ask document ask about facts of ONE relation. The facts are
invented round-robin over the relations, so by default a document's questions (and the chunk's
5 references) are of different relations, told apart by their template words; at evaluation a
question's 4 other memories are mostly the same relation's ("The airport code MEX serves..."
beside BOS), told apart only by the subject. One relation per document trains that choice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build import DOC_FACTS, RELATIONS, kb_text, qa_text, question_prompt, renderings  # noqa: E402
from common import phrase_key  # noqa: E402

SEED = 777
RENDERINGS = 2  # per invented fact
RECALL_SHARE = 0.7  # of the invented facts: stated, then asked, in one document
RECALL_FACTS = (1, 3)  # facts per recall document
ASK_FACTS = (2, 5)  # questions per ask document
COPY_DOCS = 25000  # documents that repeat a list of invented words (pure copying)
COPY_WORDS = (4, 12)
ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kl", "l", "m", "n", "p", "pr", "q", "r", "s", "st", "t",
          "tr", "v", "z", "sh", "ch", "th", "w"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ea", "io"]
CODAS = ["", "", "", "n", "r", "l", "s", "m", "x", "nd", "rt"]
CONTINENTS = ["Africa", "Asia", "Europe", "North America", "South America", "Oceania"]
MONEY = ["franc", "dollar", "peso", "mark", "crown", "rupee", "dinar", "shilling", "lira", "real"]


def word(rng, syllables):
    w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))
    return w[:1].upper() + w[1:]


def name(rng):
    return word(rng, rng.choice([2, 2, 3]))


def letters(rng, n):
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(n))


def invent(relation, rng):
    """(subject, answer) for one invented fact of `relation`."""
    if relation in ("country_capital", "region_capital"):
        return name(rng), name(rng)
    if relation == "country_currency":
        return name(rng), name(rng) + " " + rng.choice(MONEY)
    if relation == "country_continent":
        return name(rng), rng.choice(CONTINENTS)
    if relation == "country_code":
        return name(rng), letters(rng, 3)
    if relation == "country_calling_code":
        return name(rng), "+" + str(rng.randint(20, 999))
    if relation == "currency_code":
        return name(rng) + " " + rng.choice(MONEY), letters(rng, 3)
    if relation == "language_code":
        return name(rng), letters(rng, 2).lower()
    if relation == "element_symbol":
        n = name(rng).rstrip("aeiou") + "ium"
        return n.lower(), n[0] + rng.choice("abcdefghiklmnoprstuvxyz")
    if relation == "element_number":
        return (name(rng).rstrip("aeiou") + "ium").lower(), str(rng.randint(1, 180))
    if relation == "element_discovery":
        return (name(rng).rstrip("aeiou") + "ium").lower(), str(rng.randint(1600, 2020))
    if relation == "airport_city":
        return letters(rng, 3), name(rng)
    if relation in ("birth_year", "death_year"):
        return name(rng) + " " + name(rng), str(rng.randint(1500, 2000))
    raise ValueError(relation)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--knowledge", default="knowledge", help="the real facts (facts.jsonl) to stay clear of")
    ap.add_argument("--out", required=True)
    ap.add_argument("--facts", type=int, default=60000)
    ap.add_argument("--copy-docs", type=int, default=COPY_DOCS)
    ap.add_argument("--recall-share", type=float, default=RECALL_SHARE, help="facts stated, then asked, in one document")
    ap.add_argument("--ask-share", type=float, default=0.0, help="facts only asked; stated only in the knowledge base")
    ap.add_argument("--ask-one-relation", action="store_true",
                    help="each ask document asks about facts of one relation (same-relation memories side by side)")
    ap.add_argument("--seed", type=int, default=SEED, help="another seed gives another, disjoint-in-practice set")
    ap.add_argument("--id-prefix", default="synth", help="fact ids are PREFIX:relation:n")
    ap.add_argument("--questions", type=int, default=0,
                    help="also write DIR/ask-questions.jsonl and DIR/ask-kb.jsonl: the questions of the first N "
                         "ask-only facts and their references (to measure memory reading on the training distribution)")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    real = set()
    with open(os.path.join(a.knowledge, "facts.jsonl"), encoding="utf-8") as f:
        for line in f:
            fact = json.loads(line)
            real.add(phrase_key(fact["subject"]))
            real.add(phrase_key(fact["answer"]))
    relations = sorted(RELATIONS)
    facts, seen = [], set()
    while len(facts) < a.facts:
        rel = relations[len(facts) % len(relations)]
        s, ans = invent(rel, rng)
        key = (rel, phrase_key(s))
        if key in seen or phrase_key(s) in real:  # answers may repeat real ones (years, continents)
            continue
        seen.add(key)
        facts.append({"id": "%s:%s:%06d" % (a.id_prefix, rel, len(facts)), "relation": rel, "subject": s, "answer": ans})
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "kb.jsonl"), "w", encoding="utf-8") as f:
        for fact in facts:
            f.write(json.dumps({"id": fact["id"], "text": kb_text(fact), "source": "synthetic"}) + "\n")
    if a.recall_share < 0 or a.ask_share < 0 or a.recall_share + a.ask_share > 1:
        ap.error("--recall-share and --ask-share must be >= 0 and sum to at most 1")
    n_recall = int(len(facts) * a.recall_share)
    n_ask = int(len(facts) * a.ask_share)
    docs = []
    i = 0
    while i < n_recall:  # state, then ask
        group = facts[i:i + rng.randint(*RECALL_FACTS)]
        i += len(group)
        asked = group[:]
        rng.shuffle(asked)
        docs.append("".join(kb_text(g) + "\n" for g in group) + "".join(qa_text(g) for g in asked))
    asked_only = facts[n_recall:n_recall + min(n_ask, a.questions)]  # before regrouping: every relation
    if a.ask_one_relation:  # the same facts, regrouped: consecutive ask facts share their relation
        facts[n_recall:n_recall + n_ask] = sorted(facts[n_recall:n_recall + n_ask], key=lambda f: f["relation"])
    i = n_recall
    while i < n_recall + n_ask:  # ask only: the answer is in the knowledge base, nowhere in the text
        group = facts[i:min(n_recall + n_ask, i + rng.randint(*ASK_FACTS))]
        i += len(group)
        docs.append("".join(qa_text(g) for g in group))
    for _ in range(a.copy_docs):  # a list, then the same list again (sometimes a third time)
        words = " ".join(name(rng) for _ in range(rng.randint(*COPY_WORDS)))
        opener = rng.choice(["List", "Names", "Words", "Code words", "Call signs"])
        docs.append("%s: %s.\n" % (opener, words) + "Again: %s.\n" % words * rng.choice([1, 1, 2]))
    items = []
    for fact in facts[n_recall + n_ask:]:
        items += renderings(fact, RENDERINGS, rng)
    rng.shuffle(items)
    i = 0
    while i < len(items):
        k = rng.randint(*DOC_FACTS)
        docs.append("".join(items[i:i + k]))
        i += k
    rng.shuffle(docs)
    n_docs = len(docs)
    if asked_only:
        with open(os.path.join(a.out, "ask-questions.jsonl"), "w", encoding="utf-8") as f:
            for fact in asked_only:
                f.write(json.dumps({"id": "q:" + fact["id"], "fact_id": fact["id"], "relation": fact["relation"],
                                    "question": question_prompt(fact), "answer": fact["answer"]}) + "\n")
        with open(os.path.join(a.out, "ask-kb.jsonl"), "w", encoding="utf-8") as f:
            for fact in asked_only:
                f.write(json.dumps({"id": fact["id"], "text": kb_text(fact), "source": "synthetic"}) + "\n")
    with open(os.path.join(a.out, "train.jsonl"), "w", encoding="utf-8") as f:
        for d, text in enumerate(docs):
            f.write(json.dumps({"id": "%s-train:%06d" % (a.id_prefix, d), "text": text}) + "\n")
    print("synthetic: %d invented facts, %d training documents -> %s" % (len(facts), n_docs, a.out))


if __name__ == "__main__":
    main(sys.argv[1:])
