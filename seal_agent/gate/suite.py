"""The replay suite: the items a candidate adapter is judged on.

Three kinds of `SuiteItem`:

- ``past``: consolidated interactions whose outcome was accepted (feedback >= 0 or
  none). The prompt is the exchange up to (not including) its final assistant answer;
  the expected answer is that final answer. They are kept per adapter lineage in
  ``memory.home / "gate" / f"suite-{lineage}.json"`` so successive versions are judged
  on the same items, capped at ``GateConfig.replay_size`` by reservoir sampling
  (Algorithm R): every interaction ever offered had the same chance to be in the
  sample, whatever its namespace or age.
- ``canary``: general abilities that must not regress, one JSON object per line of a
  canary file (``GateConfig.canary_file``, or the set shipped for the served model:
  `shipped_canary_file`): ``{"prompt": str | [messages], "expected": str}`` plus optional
  ``"id"``; ``"check"``: how the line is judged (see `seal_agent.gate.canary`):
  ``"greedy"`` (the greedy answer contains ``expected`` or one of ``"aliases"``),
  ``"rank"`` (``expected`` outranks every one of ``"wrong"`` in log-likelihood, after the
  optional ``"reply_prefix"``) or ``"logprob"`` (the score of the configured scorer may
  not drop by more than ``"tolerance"``, default ``GateConfig.canary_tolerance``);
  ``"raw": true`` (the prompt is plain text the model continues, no chat template --
  for base-model abilities such as story continuation; raw lines default to
  ``"logprob"``, a continuation having no short answer to look for). ``"not"``: answers
  the model must never come to prefer (a *contrastive* canary, whatever its check:
  ``expected`` must keep a higher length-normalised log-likelihood than each of them, after
  the optional ``"reply_prefix"``; see `seal_agent.gate.canary`). ``"answer"`` may stand
  for ``"expected"``. Unknown keys (e.g. ``"category"``) are ignored; lines starting with
  ``#`` are comments.
- ``probe``: this consolidation's held-out new-knowledge questions (`Probe`).
- ``learned``: what committed consolidations taught, kept for good (`ReplaySuite.learned`,
  not reservoir-sampled): a closed-book question and the short answer that shows the
  fact is known (`learned_item`: from ``self_qa`` pairs and probes, and from fact
  sentences that make a one-valued claim, `fact_item`). Every later gate re-asks them
  (`seal_agent.gate.learned`). A newer item that answers the same question differently,
  or whose fact contradicts the older one's (`seal_agent.memory.claims`), retires it:
  the old question is kept with the new answer, and the old answer becomes one of its
  ``negative`` answers (answering it after the correction is wrong).

Superseded items. When a *newer* interaction in the same namespace asks the same
question and gets a different answer, the older item is a knowledge update, not
something the candidate may not forget: it is dropped. "The same question" means the
interactions' task texts (the user turns) are equal after normalisation -- lowercase,
punctuation removed, whitespace collapsed; "answered differently" means the final
answers differ after the same normalisation. A paraphrased question is not detected
(a deliberate, predictable rule: no model call, no threshold).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from seal_agent._finite import is_finite_number
from seal_agent._fs import write_atomic
from seal_agent.errors import ValidationError
from seal_agent.memory.claims import Claim, contradicts, parse_claim
from seal_agent.memory.facts import normalize_text, supersedes
from seal_agent.memory.records import Interaction, join_namespace
from seal_agent.selfedit.base import Probe, chat_messages, final_answer_index

__all__ = [
    "CANARY_CHECKS",
    "SHIPPED_CANARIES",
    "SUITE_FORMAT_VERSION",
    "ReplaySuite",
    "SuiteItem",
    "answer_core",
    "apply_learned",
    "canary_anchor_key",
    "claim_question",
    "fact_item",
    "learned_item",
    "load_canaries",
    "normalize_text",
    "past_item",
    "probe_items",
    "shipped_canary_file",
]

logger = logging.getLogger(__name__)

SUITE_FORMAT_VERSION = 2
"""Version of the persisted suite file's layout (2: ``learned`` items and ``retired``;
version-1 files load, with no learned items)."""
_READABLE_VERSIONS = (1, 2)

ItemKind = Literal["past", "canary", "probe", "learned"]

CANARY_CHECKS = ("greedy", "rank", "logprob")
"""How a canary line can be judged (``"check"``); see `seal_agent.gate.canary`."""

SHIPPED_CANARIES = {"smollm2-135m": "smollm2-135m.jsonl"}
"""Served model name -> canary file shipped in ``seal_agent/gate/canaries/``."""

CANARY_ANCHOR_PREFIX = "canary:"

_LINEAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class SuiteItem:
    """One thing the gate asks both adapters.

    Attributes:
        kind: ``"past"``, ``"canary"`` or ``"probe"``.
        id: Stable id: the interaction id (past), the canary's id or ``canary-<line>``,
            or ``probe-<hash prefix>``.
        prompt: Chat messages ``[{"role", "content"}]`` before the answer; for a raw
            item, a single ``{"role": "text", "content": ...}`` holding the plain text.
        expected: The answer (or continuation) the model should produce.
        namespace: Namespace path (``"users/alice"``) of the source interaction, or "".
        key: Normalised task text: two items with the same namespace and key ask the
            same question (superseded detection).
        created_at: ISO time of the source interaction ("" for canaries and probes).
        tolerance: Largest allowed score drop for this item (``logprob`` canaries), or None.
        raw: The prompt is plain text to continue (no chat template).
        check: How a canary is judged: ``"greedy"``, ``"rank"`` or ``"logprob"`` ("" otherwise).
        aliases: Other accepted spellings of ``expected`` (``greedy`` canaries).
        wrong: Plausible wrong answers ``expected`` must outrank (``rank`` canaries).
        reply_prefix: Start of the reply after which ``expected`` and ``wrong`` (and
            ``foils``) are scored (``rank`` and contrastive canaries); "" scores them as
            the start of the reply.
        foils: Answers ``expected`` must keep outranking (a contrastive canary's
            ``"not"``): any flip rejects, whatever ``canary_max_flip_share`` allows.
        negative: ``learned`` items: answers that make the answer wrong even when it
            holds ``expected`` -- the old answers of a corrected fact.
        statement: ``learned`` items: the sentence that taught the fact (the claim that
            decides which later facts correct it).
        source: ``learned`` items: the interaction the fact came from.
    """

    kind: ItemKind
    id: str
    prompt: tuple[dict[str, Any], ...]
    expected: str
    namespace: str = ""
    key: str = ""
    created_at: str = ""
    tolerance: float | None = None
    raw: bool = False
    check: str = ""
    aliases: tuple[str, ...] = ()
    wrong: tuple[str, ...] = ()
    reply_prefix: str = ""
    foils: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    statement: str = ""
    source: str = ""

    @property
    def preview(self) -> str:
        """The last prompt message, shortened: what a report shows."""
        text = str(self.prompt[-1].get("content", "")) if self.prompt else ""
        text = " ".join(text.split())
        return text if len(text) <= 100 else text[:97] + "..."

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["prompt"] = [dict(m) for m in self.prompt]
        for key in ("aliases", "wrong", "foils", "negative"):
            out[key] = list(getattr(self, key))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteItem:
        d = dict(data)
        d["prompt"] = tuple(dict(m) for m in d.get("prompt", ()))
        for key in ("aliases", "wrong", "foils", "negative"):
            d[key] = tuple(d.get(key, ()))
        return cls(**d)


def past_item(interaction: Interaction) -> SuiteItem | None:
    """The replay item of a consolidated interaction, or None when it has none.

    None when the feedback is negative (the outcome was not accepted), when there is
    no final assistant answer, or when nothing precedes the answer.
    """
    if interaction.feedback is not None and interaction.feedback < 0:
        return None
    idx = final_answer_index(interaction.messages)
    if idx is None:
        return None
    prompt = chat_messages(interaction.messages[:idx])
    if not prompt:
        return None
    return SuiteItem(
        kind="past",
        id=interaction.id,
        prompt=tuple(prompt),
        expected=interaction.messages[idx]["content"],
        namespace=join_namespace(interaction.namespace),
        key=normalize_text(interaction.task),
        created_at=interaction.created_at.isoformat(),
    )


def probe_items(probes: Sequence[Probe]) -> list[SuiteItem]:
    """New-knowledge probes as suite items (one user turn each)."""
    return [
        SuiteItem(
            kind="probe",
            id=f"probe-{p.hash[:12]}",
            prompt=({"role": "user", "content": p.question},),
            expected=p.answer,
            namespace=join_namespace(p.namespace),
            key=normalize_text(p.question),
        )
        for p in probes
    ]


# --------------------------------------------------------------------------- learned facts

_CORE_MAX_WORDS = 6  # a longer answer cannot be checked by "the reply contains it"
_LEADING = {"in", "at", "on", "to", "by", "it", "its", "is", "was", "are"}
_QUESTION_TEMPLATES = {
    "identity": "What is {s} called?",
    "lives_in": "Where {does} {s} live?",
    "works_at": "Where {does} {s} work?",
    "located_in": "Where is {s}?",
    "starts_at": "When {does} {s} start?",
    "ends_at": "When {does} {s} end?",
    "leaves_at": "When {does} {s} leave?",
    "arrives_at": "When {does} {s} arrive?",
    "drives": "What {does} {s} drive?",
    "costs": "How much {does} {s} cost?",
    "copula": "What is {s}?",  # only preferences parse to a plain copula: "my favourite colour"
}


def _words(text: str) -> list[str]:
    from seal_agent.gate.scorers import normalize_answer

    return normalize_answer(text).split()


def answer_core(question: str, answer: str) -> str | None:
    """The short answer that shows a fact is known: what a greedy reply must contain.

    The value of the answer's claim when it makes one ("His sailboat is called the
    Saltpetal." -> ``saltpetal``), else the normalised answer without leading words the
    question already has or a leading preposition ("In Lisbon." -> ``lisbon``). None when
    that is empty or longer than six words (a sentence no reply repeats word for word).
    """
    claim = parse_claim(answer)
    words = _words(claim.value) if claim is not None else _words(answer)
    asked = set(_words(question))
    while words and (words[0] in asked or words[0] in _LEADING) and len(words) > 1:
        words = words[1:]
    if not words or len(words) > _CORE_MAX_WORDS:
        return None
    return " ".join(words)


def claim_question(claim: Claim, sentence: str = "") -> str | None:
    """A closed-book question whose answer is the claim's value, or None (measures, births:
    no question that reliably asks for just the value). `sentence`, the claim's source,
    gives the subject its written form ("Priya", not "the priya")."""
    template = _QUESTION_TEMPLATES.get(claim.relation)
    if template is None:
        return None
    pronoun = claim.head in {"i", "we", "you", "they", "he", "she"} and not claim.owner
    if pronoun:
        subject = "I" if claim.head == "i" else claim.head
        does = "does" if claim.head in {"he", "she"} else "do"
    else:
        written = re.search(r"\b(the\s+)?" + r"\s+".join(map(re.escape, claim.head.split())) + r"\b",
                            sentence, re.IGNORECASE)
        head = written.group(0)[len(written.group(1) or ""):] if written else claim.head
        article = "the" if written is None or written.group(1) else ""
        subject = " ".join(x for x in (claim.owner or article, head) if x)
        does = "does"
    if claim.relation == "identity" and not re.search(r"\b(called|named|known as|goes by|name)\b", sentence, re.I):
        template = "What is {s}?"  # "The wifi password is Hunter22": identity by a copula
    return template.format(s=subject, does=does)


def _learned_id(namespace: str, key: str, core: str) -> str:
    import hashlib

    return "learned-" + hashlib.sha256(f"{namespace}\n{key}\n{core}".encode()).hexdigest()[:12]


def learned_item(question: str, answer: str, namespace: str, source: str = "") -> SuiteItem | None:
    """A learned fact as a closed-book question (one user turn) and its `answer_core`; None
    without a usable short answer. `namespace` is a path (``"users/alice"``)."""
    core = answer_core(question, answer)
    if not question.strip() or core is None:
        return None
    key = normalize_text(question)
    return SuiteItem(kind="learned", id=_learned_id(namespace, key, core),
                     prompt=({"role": "user", "content": question.strip()},), expected=core,
                     namespace=namespace, key=key, statement=" ".join(answer.split()), source=source)


def fact_item(sentence: str, namespace: str, source: str = "") -> SuiteItem | None:
    """A fact sentence as a learned item, when it makes a claim a question can be formed
    for (`claim_question`); else None."""
    claim = parse_claim(sentence)
    question = claim_question(claim, sentence) if claim is not None else None
    if question is None:
        return None
    return learned_item(question, sentence, namespace, source)


def taught_items(probes: Iterable[Any], edits: Iterable[Mapping[str, Any]],
                 namespaces: Mapping[str, str]) -> list[SuiteItem]:
    """The learned items of one consolidation: its probes, its ``self_qa`` training pairs,
    and the claims of its ``statements`` / ``implications`` sentences.

    Args:
        probes: `Probe`s (or dicts with ``question``, ``answer``, ``namespace``, ``interaction_id``).
        edits: Training examples as consolidation keeps them: ``example``, ``strategy``,
            ``interaction_id``.
        namespaces: Interaction id -> namespace path, for the edits.
    """
    from seal_agent.memory.facts import _sentences

    out: dict[str, SuiteItem] = {}

    def put(item: SuiteItem | None) -> None:
        if item is not None:
            out.setdefault(item.id, item)

    for p in probes:
        get = p.get if isinstance(p, Mapping) else lambda k, p=p: getattr(p, k)
        put(learned_item(str(get("question")), str(get("answer")), join_namespace(tuple(get("namespace"))),
                         str(get("interaction_id"))))
    for e in edits:
        source = str(e.get("interaction_id", ""))
        if source not in namespaces:
            continue
        ns, example = namespaces[source], e.get("example") or {}
        if e.get("strategy") == "self_qa" and "messages" in example:
            msgs = example["messages"]
            q = next((m["content"] for m in msgs if m.get("role") == "user"), "")
            a = next((m["content"] for m in reversed(msgs) if m.get("role") == "assistant"), "")
            put(learned_item(q, a, ns, source))
        elif e.get("strategy") in ("statements", "implications") and "text" in example:
            for sentence in _sentences(str(example["text"])):
                put(fact_item(sentence, ns, source))
    return list(out.values())


def _overlaps(a: str, b: str) -> bool:
    """One answer holds the other as whole words ("lisbon" / "lisbon portugal"): a refinement."""
    x, y = f" {' '.join(_words(a))} ", f" {' '.join(_words(b))} "
    return x.strip() != "" and y.strip() != "" and (x in y or y in x)


def _corrects(new: SuiteItem, old: SuiteItem) -> bool:
    """Whether `new` corrects `old`: same namespace and the same question answered otherwise
    (the rule the facts and past tasks use), or a claim that contradicts the old one's."""
    if new.namespace != old.namespace or _overlaps(new.expected, old.expected):
        return False
    if supersedes(new.key, new.namespace, new.expected, old.key, old.namespace, old.expected):
        return True
    cn, co = parse_claim(new.statement), parse_claim(old.statement)
    return cn is not None and co is not None and contradicts(cn, co)


def _negatives(expected: str, answers: Iterable[str]) -> tuple[str, ...]:
    """Old answers as negatives, without any the new answer holds (or is held by)."""
    out: list[str] = []
    for a in answers:
        if a and not _overlaps(expected, a) and a not in out:
            out.append(a)
    return tuple(out)


def apply_learned(existing: Sequence[SuiteItem], new: Sequence[SuiteItem]
                  ) -> tuple[list[SuiteItem], list[tuple[SuiteItem, str]]]:
    """The learned items once `new` ones are added, and the retired ones with the id of
    the item that corrected each.

    A new item equal to an existing one (same namespace, question and answer) adds
    nothing. One that answers an existing question differently, or contradicts its
    fact, retires it: the new item carries the old answer as a negative, and when the old
    question was another one it stays, re-asked with the new answer (and the old one as
    a negative). An answer that refines the old one ("lisbon" -> "lisbon portugal")
    replaces it without a negative. Pure: the suite is not modified.
    """
    items = list(existing)
    retired: list[tuple[SuiteItem, str]] = []
    for n in new:
        if any(x.id == n.id for x in items):
            continue
        negs: list[str] = list(n.negative)
        keep: list[SuiteItem] = []
        for o in items:
            if o.namespace == n.namespace and o.key == n.key and _overlaps(o.expected, n.expected):
                retired.append((o, n.id))  # the same fact, answered more (or less) fully
                negs.extend(o.negative)
            elif _corrects(n, o):
                retired.append((o, n.id))
                negs.extend([o.expected, *o.negative])
                if o.key != n.key:  # the old question, re-asked: the old answer is now wrong
                    keep.append(dataclasses.replace(
                        o, id=_learned_id(o.namespace, o.key, n.expected), expected=n.expected, aliases=n.aliases,
                        negative=_negatives(n.expected, [o.expected, *o.negative]), statement=n.statement,
                        source=n.source))
            else:
                keep.append(o)
        items = [*keep, dataclasses.replace(n, negative=_negatives(n.expected, negs))]
    unique = {x.id: x for x in reversed(items)}  # a re-asked old question may equal a new item: the newest wins
    return [x for x in items if unique[x.id] is x], retired


def _supersedes(newer_key: str, newer_ns: str, newer_answer: str, item: SuiteItem) -> bool:
    # the decision the facts use too: one rule for "a knowledge update is not forgetting"
    return supersedes(newer_key, newer_ns, newer_answer, item.key, item.namespace, item.expected)


@dataclass
class ReplaySuite:
    """The persisted, reservoir-sampled sample of past tasks of one adapter lineage.

    Attributes:
        lineage: Adapter lineage the suite belongs to (``"global"``).
        capacity: Most items kept (``GateConfig.replay_size``).
        seed: Seed of the reservoir's draws.
        items: The sampled past items, in no particular order.
        n_seen: Eligible interactions offered so far (Algorithm R's counter).
        watermark: Largest interaction id offered so far; ids at or below it are not
            offered again (ids are time-sortable and consolidation takes the oldest
            first, so this is "already seen" without storing every id).
        dropped: Ids of items dropped as superseded, with the id that superseded them
            (the most recent 100 kept, for reports).
        anchors: Item id -> scorer -> the best score the item ever had under a committed
            adapter (see `record_scores`; used when ``GateConfig.anchor_past``). Greedy,
            rank and contrastive canaries are anchored too, under `canary_anchor_key` ->
            check (``contrast:<foils hash>`` for the contrastive check) -> 1.0 once the
            canary passed under a committed adapter (or the base model before it).
    """

    lineage: str
    capacity: int
    seed: int = 0
    items: list[SuiteItem] = field(default_factory=list)
    n_seen: int = 0
    watermark: str = ""
    dropped: list[dict[str, str]] = field(default_factory=list)
    anchors: dict[str, dict[str, float]] = field(default_factory=dict)
    learned: list[SuiteItem] = field(default_factory=list)
    retired: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.lineage, str) or not _LINEAGE_RE.match(self.lineage):
            raise ValidationError("lineage", self.lineage,
                                  "must be 1-100 characters of letters, digits, '.', '_', '-'")

    # ------------------------------------------------------------------ persistence

    @staticmethod
    def path_for(home: Path, lineage: str) -> Path:
        """Where the suite of `lineage` lives under a memory home."""
        return Path(home) / "gate" / f"suite-{lineage}.json"

    def save(self, path: Path) -> Path:
        """Write atomically (temporary file + rename)."""
        from seal_agent import __version__

        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "format_version": SUITE_FORMAT_VERSION,
            "library_version": __version__,
            "lineage": self.lineage,
            "capacity": self.capacity,
            "seed": self.seed,
            "n_seen": self.n_seen,
            "watermark": self.watermark,
            "dropped": self.dropped,
            "items": [it.to_dict() for it in self.items],
            "learned": [it.to_dict() for it in self.learned],
            "retired": self.retired,
            # Anchors of items that left the reservoir are of no more use; canary anchors stay.
            "anchors": {k: v for k, v in self.anchors.items()
                        if k in {it.id for it in self.items} or k.startswith(CANARY_ANCHOR_PREFIX)},
        }
        write_atomic(path, json.dumps(data, ensure_ascii=False, indent=1))
        return path

    @classmethod
    def load(cls, path: Path, *, capacity: int | None = None) -> ReplaySuite:
        """Read a saved suite; a smaller `capacity` than saved trims it (seeded).

        Raises:
            ValidationError: The file is not a suite of a known format version.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValidationError("suite_file", str(path), f"cannot be read as JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format_version") not in _READABLE_VERSIONS:
            raise ValidationError("suite_file.format_version", data.get("format_version") if isinstance(data, dict)
                                  else None, f"must be one of {list(_READABLE_VERSIONS)} (file {path})")
        suite = cls(
            lineage=data["lineage"], capacity=int(data["capacity"]), seed=int(data.get("seed", 0)),
            items=[SuiteItem.from_dict(d) for d in data.get("items", [])],
            n_seen=int(data.get("n_seen", 0)), watermark=str(data.get("watermark", "")),
            dropped=list(data.get("dropped", [])),
            # A NaN/inf anchor (saved before they were refused) anchors nothing: dropped.
            anchors={str(k): {str(n): float(x) for n, x in v.items() if is_finite_number(x)}
                     for k, v in data.get("anchors", {}).items()},
            # Version 1 kept no learned facts: such a suite starts learning them at its next commit.
            learned=[SuiteItem.from_dict(d) for d in data.get("learned", [])],
            retired=list(data.get("retired", [])),
        )
        if capacity is not None and capacity != suite.capacity:
            suite.capacity = capacity
            if len(suite.items) > capacity:  # a uniform subsample of a uniform sample is uniform
                rng = random.Random(f"{suite.seed}:trim:{suite.n_seen}")
                suite.items = rng.sample(suite.items, capacity)
        return suite

    # ------------------------------------------------------------------ updates

    def add(self, interactions: Iterable[Interaction]) -> int:
        """Offer interactions (oldest first) to the reservoir; return how many were eligible.

        The caller vouches that they were learned by a committed adapter (their
        ``status`` field may predate the commit, so it is not checked). Each eligible
        interaction first drops the older items it supersedes, then is offered to the
        reservoir. Interactions with negative feedback, without a final answer, or
        at/below the watermark are skipped.
        """
        eligible = 0
        for it in sorted(interactions, key=lambda x: x.id):
            if self.watermark and it.id <= self.watermark:
                continue
            self.watermark = it.id
            item = past_item(it)
            if item is None:
                continue
            eligible += 1
            self.drop_superseded([(item.key, item.namespace, item.expected, item.id)])
            if item.key and any(x.key == item.key and x.namespace == item.namespace for x in self.items):
                continue  # same question, same answer: already represented
            self.n_seen += 1
            if len(self.items) < self.capacity:
                self.items.append(item)
                continue
            # Algorithm R: keep the n-th item with probability capacity / n, replacing a
            # uniformly chosen slot. The draw is a function of (seed, n) only, so a rebuild
            # from the same log gives the same suite and no RNG state needs persisting.
            j = random.Random(f"{self.seed}:{self.n_seen}").randrange(self.n_seen)
            if j < self.capacity:
                self.items[j] = item
        return eligible

    def learn(self, items: Iterable[SuiteItem]) -> list[tuple[SuiteItem, str]]:
        """Add a committed consolidation's learned items (`apply_learned`); the retired ones."""
        self.learned, retired = apply_learned(self.learned, list(items))
        for old, by in retired:
            logger.info("gate: learned probe %s (%r -> %r) retired by %s", old.id, old.preview, old.expected, by)
        self.retired = (self.retired + [{"id": o.id, "question": o.preview, "answer": o.expected, "retired_by": by}
                                        for o, by in retired])[-100:]
        return retired

    def record_scores(self, rows: Iterable[Mapping[str, Any]], scorer: str) -> int:
        """Raise each past item's anchor to its best score in a committed gate report.

        Args:
            rows: The committed report's rows (``kind``, ``id``, ``current``, ``candidate``).
            scorer: The scorer those numbers come from.

        Returns:
            How many anchors were set or raised.
        """
        ids = {it.id for it in self.items}
        n = 0
        for row in rows:
            if (row.get("kind") == "canary" and row.get("anchor_key")
                    and row.get("check") in ("greedy", "rank", "contrast")):
                # Pass (1.0) / fail (0.0) of a greedy, rank or contrastive canary: anchored under
                # its check (a contrastive one under its foils too), whatever the scorer, so
                # that canaries lost over several updates add up.
                key, name = str(row["anchor_key"]), str(row.get("anchor_slot") or row["check"])
            elif row.get("kind") == "past" and row.get("id") in ids:
                key, name = str(row["id"]), scorer
            else:
                continue
            # Only finite scores anchor (a NaN one is null in a saved report): max() over a
            # NaN depends on the order, and a NaN anchor would compare False with everything.
            scores = [float(row[k]) for k in ("current", "candidate") if is_finite_number(row.get(k))]
            if not scores:
                continue
            best = max(scores)
            slot = self.anchors.setdefault(key, {})
            if best > slot.get(name, float("-inf")):
                slot[name] = best
                n += 1
        return n

    def drop_superseded(self, newer: Iterable[tuple[str, str, str, str]]) -> list[tuple[SuiteItem, str]]:
        """Drop items that a newer (key, namespace, answer, id) answers differently.

        Returns the dropped items with the id that superseded each.
        """
        out: list[tuple[SuiteItem, str]] = []
        for key, ns, answer, new_id in newer:
            keep = []
            for x in self.items:
                if x.id < new_id and _supersedes(key, ns, answer, x):
                    out.append((x, new_id))
                else:
                    keep.append(x)
            self.items = keep
        for x, by in out:
            logger.info("gate: replay item %s superseded by %s (knowledge update)", x.id, by)
            self.dropped = (self.dropped + [{"id": x.id, "superseded_by": by}])[-100:]
        return out

    def superseded_by(self, interactions: Iterable[Interaction]) -> list[tuple[SuiteItem, str]]:
        """Items that `interactions` (e.g. the ones being consolidated now) supersede.

        Does not modify the suite: the candidate may still be rejected, in which case
        the old answer is what the served adapter knows.
        """
        newer = []
        for it in interactions:
            if it.feedback is not None and it.feedback < 0:
                continue  # a rejected answer is not a correction
            idx = final_answer_index(it.messages)
            if idx is None:
                continue
            newer.append((normalize_text(it.task), join_namespace(it.namespace), it.messages[idx]["content"], it.id))
        probe = ReplaySuite(self.lineage, self.capacity, self.seed, items=list(self.items))
        return probe.drop_superseded(newer)


# --------------------------------------------------------------------------- canaries


def shipped_canary_file(model_name: str | None) -> Path | None:
    """The canary file shipped for a served model (`SHIPPED_CANARIES`), or None."""
    name = SHIPPED_CANARIES.get(str(model_name)) if model_name is not None else None
    if name is None:
        return None
    from importlib.resources import files

    return Path(str(files("seal_agent.gate") / "canaries" / name))


def canary_anchor_key(item: SuiteItem) -> str:
    """Where a canary's anchor lives: its id and a hash of what it asks and expects.

    Editing a line (prompt, answer or check) gives it a fresh anchor.
    """
    import hashlib

    body = json.dumps([item.id, [dict(m) for m in item.prompt], item.expected, item.check, item.raw],
                      sort_keys=True, ensure_ascii=False)
    return f"{CANARY_ANCHOR_PREFIX}{item.id}:{hashlib.sha256(body.encode()).hexdigest()[:12]}"


def load_canaries(path: str | os.PathLike[str], *, default_tolerance: float,
                  default_check: str = "greedy") -> list[SuiteItem]:
    """Read a canary JSONL file (blank lines and lines starting with ``#`` are skipped).

    Args:
        path: The file.
        default_tolerance: ``tolerance`` of ``logprob`` lines that give none.
        default_check: ``check`` of chat lines that give none (``GateConfig.canary_check``);
            a line without ``wrong`` answers falls back from ``"rank"`` to ``"greedy"``.
            Raw lines default to ``"logprob"``.

    Raises:
        ValidationError: The file is missing, or a line is not a JSON object with a
            non-empty ``prompt`` (string or messages) and ``expected`` (or ``answer``)
            string, or has a bad optional field (e.g. a ``not`` list naming the expected answer); the error's field names the line and key, e.g.
            ``canaries.jsonl:3.expected``.
    """
    from seal_agent.gate.scorers import normalize_answer

    p = Path(path)
    if not p.is_file():
        raise ValidationError("gate.canary_file", str(p), "does not exist or is not a file")
    items: list[SuiteItem] = []
    seen: set[str] = set()
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{p.name}:{n}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ValidationError(where, line[:60], f"is not valid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise ValidationError(where, obj, 'must be a JSON object {"prompt": ..., "expected": ...}')
        raw = obj.get("raw", False)
        if not isinstance(raw, bool):
            raise ValidationError(f"{where}.raw", raw, "must be true or false")
        prompt = _canary_prompt(obj.get("prompt"), raw, where)
        if "answer" in obj and "expected" in obj and obj["answer"] != obj["expected"]:
            raise ValidationError(f"{where}.answer", obj["answer"], "differs from expected: give one of them")
        key = "expected" if "expected" in obj or "answer" not in obj else "answer"
        expected = obj.get(key)
        if not isinstance(expected, str) or not expected.strip():
            raise ValidationError(f"{where}.{key}", expected, "must be a non-empty string")
        aliases = _strings(obj.get("aliases", []), f"{where}.aliases")
        wrong = _strings(obj.get("wrong", []), f"{where}.wrong")
        foils = _strings(obj.get("not", []), f"{where}.not")
        if any(normalize_answer(f) == normalize_answer(e) for f in foils for e in (expected, *aliases)):
            raise ValidationError(f"{where}.not", list(foils), "must not contain the expected answer or an alias")
        prefix = obj.get("reply_prefix", "")
        if not isinstance(prefix, str):
            raise ValidationError(f"{where}.reply_prefix", prefix, "must be a string")
        check = obj.get("check")
        if check is None:
            check = "logprob" if raw else ("greedy" if default_check == "rank" and not wrong else default_check)
        if check not in CANARY_CHECKS:
            raise ValidationError(f"{where}.check", check, f"must be one of {list(CANARY_CHECKS)}")
        if check == "rank" and not wrong:
            raise ValidationError(f"{where}.wrong", wrong, 'must list wrong answers for "check": "rank"')
        if check == "greedy":
            for text in (expected, *aliases):
                if not normalize_answer(text):
                    raise ValidationError(f"{where}.expected", text, "has nothing left to look for once "
                                          "normalised (lowercase, no punctuation or articles)")
        if any(normalize_answer(w) == normalize_answer(expected) for w in wrong):
            raise ValidationError(f"{where}.wrong", wrong, "must not contain the expected answer")
        tol = obj.get("tolerance", default_tolerance)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0:
            raise ValidationError(f"{where}.tolerance", tol, "must be a number >= 0")
        cid = obj.get("id", f"canary-{n}")
        if not isinstance(cid, str) or not cid or cid in seen:
            raise ValidationError(f"{where}.id", cid, "must be a non-empty string, unique in the file")
        seen.add(cid)
        items.append(SuiteItem(kind="canary", id=cid, prompt=prompt, expected=expected,
                               tolerance=float(tol), raw=raw, check=check, aliases=aliases, wrong=wrong,
                               reply_prefix=prefix, foils=foils))
    return items


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValidationError(where, value, "must be a list of non-empty strings")
    return tuple(value)


def _canary_prompt(prompt: Any, raw: bool, where: str) -> tuple[dict[str, Any], ...]:
    if isinstance(prompt, str) and prompt.strip():
        return ({"role": "text" if raw else "user", "content": prompt},)
    if raw:
        raise ValidationError(f"{where}.prompt", prompt, "must be a non-empty string when raw is true")
    ok = isinstance(prompt, list) and bool(prompt) and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant", "tool")
        and isinstance(m.get("content"), str) for m in prompt)
    if not ok:
        raise ValidationError(f"{where}.prompt", prompt,
                              'must be a non-empty string or a list of {"role", "content"} messages')
    return tuple({"role": m["role"], "content": m["content"]} for m in prompt)
