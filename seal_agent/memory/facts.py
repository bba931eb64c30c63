"""Semantic memory: facts distilled from the episodes, kept current, recalled by meaning.

Consolidation already makes the model restate what an exchange taught (the
``implications``, ``statements`` and ``self_qa`` self-edits). The same restatements
serve retrieval: `distill` turns a self-edit batch into facts, one sentence (or one
question/answer pair) each, with the ids of the interactions they came from, and
`FactStore.add` stores them in the interaction's namespace.

Where they live:
  * table ``facts`` of the journal (the store of truth, like the interactions): text,
    namespace, ``key`` (what the fact is about), source ids, status (``active`` or
    ``superseded``) and ``indexed``;
  * Chroma collection ``memory.facts_collection`` (``seal_facts``): the active facts,
    with the same namespace metadata as the interactions (``ns``, ``ns_0``..), so recall
    filters by namespace in Chroma. Only the process that writes the index writes it
    (`FactStore.sync`, run by `recall` and after writes), like the interactions;
  * their versions in the journal's ``history`` table (``created``, ``superseded``,
    ``forgotten``).

A knowledge update is not forgetting: a newer fact of the same namespace about the same
thing with another value supersedes the older one. The older fact stays in history and
is never recalled. A fact's key is the question it answers (``self_qa``; a newer answer
to the same question supersedes: `supersedes`, the decision the gate's replay suite
uses for past answers too) or, for a sentence, the *slot* of the claim it makes
(`seal_agent.memory.claims`: "sailboat | identity" for "My brother's sailboat is
called the Tumbleweed"); facts in one slot supersede each other when their owners are
compatible and the newer value is not a mere refinement (`claims.contradicts`). A
sentence that makes no one-valued claim ("I like tea") is keyed on its own text and
relates only to itself, so nothing is superseded by accident.

Forget reaches the facts: `forget_facts` (the hook `SealMemory.forget` and the TTL sweep
call) deletes every fact one of whose source interactions is forgotten or expired, from
the table, Chroma and the history's content.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from seal_agent.errors import BackendUnavailableError, ConfigError, StorageError, ValidationError
from seal_agent.memory.claims import contradicts, parse_claim
from seal_agent.memory.index import ChromaIndex, namespace_where
from seal_agent.memory.journal import Journal, _history
from seal_agent.memory.records import (
    HistoryEvent,
    Interaction,
    Memory,
    Namespace,
    iso,
    join_namespace,
    parse_namespace,
    utc_now,
)

if TYPE_CHECKING:
    from seal_agent.seal_memory import SealMemory

__all__ = ["Fact", "FactStore", "distill", "fact_key", "forget_facts", "forget_in_transaction", "normalize_text",
           "record_facts", "statement_key", "supersedes"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS facts (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    text TEXT NOT NULL,
    sources TEXT NOT NULL,
    latest_source TEXT NOT NULL,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    superseded_by TEXT,
    indexed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS facts_key ON facts (namespace, key);
CREATE INDEX IF NOT EXISTS facts_unindexed ON facts (indexed) WHERE indexed=0;
CREATE TABLE IF NOT EXISTS facts_deleted (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS facts_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)
"""

# Facts' keys: 1 = the sentence up to its verb (`fact_key`), 2 = the claim's slot
# (`seal_agent.memory.claims`). `FactStore` rekeys a version-1 table once, at open.
KEY_FORMAT = "2"

# Strategies whose items restate what an exchange taught (critique and raw do not).
FACT_STRATEGIES = ("implications", "statements", "self_qa")


# ------------------------------------------------------------------ the decision


def normalize_text(text: str) -> str:
    """Lowercase, strip accents' compatibility forms and punctuation, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def supersedes(newer_key: str, newer_ns: str, newer_answer: str,
               older_key: str, older_ns: str, older_answer: str) -> bool:
    """Whether a newer answer replaces an older one: same question (`key`, normalized),
    same namespace, another answer. A knowledge update, not forgetting -- the gate's
    replay suite drops a past answer on it, the facts supersede an older fact on it."""
    return (bool(newer_key) and newer_key == older_key and newer_ns == older_ns
            and normalize_text(newer_answer) != normalize_text(older_answer))


_LEAD = re.compile(r"^(?:(?:actually|no|correction|update|well|oh|so|in fact|sorry|now|btw)\b\s*)+")
_FILLER = re.compile(r"\b(?:now|actually|currently|still|really)\b\s*")
_VERB = re.compile(r"\b(?:is|are|was|were|lives in|live in|works at|work at|works for|work for|"
                   r"moved to|prefers|prefer)\b")


def fact_key(text: str) -> tuple[str, str]:
    """(key, answer) of a fact sentence as key format 1 stored it: the normalized
    sentence up to and including its first verb, and the rest. Without such a verb the
    whole sentence is the key (and the answer), so it relates only to itself. Kept to
    recognize (and rekey) version-1 keys; new facts are keyed by `statement_key`."""
    n = _LEAD.sub("", normalize_text(text))
    m = _VERB.search(n)
    if m is None or m.start() == 0:
        return n, n
    key = " ".join(_FILLER.sub("", n[:m.end()]).split())
    answer = " ".join(_FILLER.sub("", n[m.end():]).split())
    return key, answer or n


def statement_key(text: str) -> str:
    """The key of a fact sentence: the slot of its claim (``"sailboat | identity"``),
    or its normalized text when it makes no one-valued claim."""
    claim = parse_claim(text)
    return claim.slot if claim is not None else normalize_text(text)


def _is_slot(key: str) -> bool:
    return " | " in key  # a normalized question or sentence has no "|"


# ------------------------------------------------------------------ distilling


@dataclass(frozen=True)
class Fact:
    """A stored fact.

    Attributes:
        id: ``fact-`` and 24 hex digits, derived from namespace and normalized text.
        namespace: The namespace of its source interactions.
        text: The fact as written.
        key: What it is about (see `fact_key`).
        sources: Ids of the interactions it was distilled from.
        created_at: When it was first stored.
        status: ``active`` or ``superseded``.
        superseded_by: The fact that replaced it.
    """

    id: str
    namespace: Namespace
    text: str
    key: str
    sources: tuple[str, ...]
    created_at: datetime
    status: str = "active"
    superseded_by: str | None = None


def _sentences(text: str) -> list[str]:
    out = []
    for s in re.split(r"(?<=[.!?])\s+|\n+", text):
        s = s.strip(" -*\t")
        if len(s.split()) >= 3 and not s.endswith("?"):
            out.append(s)
    return out


def distill(edits: Iterable[Any], interactions: dict[str, Interaction]) -> list[tuple[Namespace, str, str, str]]:
    """Facts a self-edit batch restates: ``(namespace, text, key, source id)`` each.

    `edits` are `seal_agent.selfedit.SelfEdit`s. ``self_qa`` pairs become "question
    answer" facts keyed on the question; ``implications`` written by the model and
    ``statements`` (what the exchange stated) become one fact per sentence. The passage
    an implications run adds as its own training example is not a fact twice.
    """
    out: list[tuple[Namespace, str, str, str]] = []
    seen: set[tuple[Namespace, str]] = set()
    edits = list(edits)
    # The passage an implications run adds is what `statements` states too, and the batch
    # keeps one of two equal examples: when the statements copy was the one dropped, the
    # passage is the only record of what the user said (and the correction it may carry).
    stated = {e.interaction_id for e in edits if e.strategy == "statements"}
    for e in edits:
        it = interactions.get(e.interaction_id)
        if it is None or e.strategy not in FACT_STRATEGIES:
            continue
        if e.strategy == "implications" and not e.model_written and e.interaction_id in stated:
            continue
        items: list[tuple[str, str]] = []
        if "messages" in e.example:
            msgs = e.example["messages"]
            q = next((m["content"] for m in msgs if m.get("role") == "user"), "")
            a = next((m["content"] for m in reversed(msgs) if m.get("role") == "assistant"), "")
            if q and a:
                items.append((f"{q.strip()} {a.strip()}", normalize_text(q)))
        else:
            items.extend((s, statement_key(s)) for s in _sentences(str(e.example.get("text", ""))))
        for text, key in items:
            marker = (it.namespace, normalize_text(text))
            if key and marker not in seen:
                seen.add(marker)
                out.append((it.namespace, text, key, it.id))
    return out


def _fact_id(namespace: Namespace, text: str) -> str:
    digest = hashlib.sha256(f"{join_namespace(namespace)}\n{normalize_text(text)}".encode()).hexdigest()
    return "fact-" + digest[:24]


def _answer(text: str, key: str) -> str:
    """The part of a fact that answers its key (the whole text when unrelated)."""
    k, a = fact_key(text)
    if k == key:
        return a
    n = normalize_text(text)
    return n[len(key):].strip() if n.startswith(key) else n


# ------------------------------------------------------------------ the store


class FactStore:
    """Facts of one memory home: rows in the journal's database, vectors in Chroma.

    Args:
        journal: The home's journal (its database holds the ``facts`` table).
        index: A `ChromaIndex` on the facts collection (its collection and embeddings
            are used; facts are not `Interaction`s).
        read_only: Create nothing (a read-only home).
        shares_client_of: The interactions' index whose client `index` uses: when it
            reopens its client, the facts collection is reopened too.
    """

    def __init__(self, journal: Journal, index: ChromaIndex, *, read_only: bool = False,
                 shares_client_of: ChromaIndex | None = None) -> None:
        self.journal = journal
        self.index = index
        self._main = shares_client_of
        self._seen: Any = None
        self._sync_lock = threading.Lock()
        self._ready = read_only
        if not read_only:
            self._schema()

    def _coll(self) -> Any:
        """The facts collection, reopened whenever the interactions' index reopened its
        client (forget closes it to scrub Chroma's files): a collection of a closed
        client fails every call."""
        if self._main is not None:
            client = self._main.client  # opens (or reopens) the shared client
            if client is not self._seen:
                with self.index._lock:
                    self.index._collection = None
                    self.index._client = None
                self._seen = client
        return self.index.collection

    def _op(self) -> Any:
        """The interactions index's operation gate: a forget scrubbing Chroma's files from
        a child process holds every Chroma call of this process back, facts' included."""
        return self._main._op() if self._main is not None else contextlib.nullcontext()

    def _chroma(self, what: str, call: Callable[[Any], _T]) -> _T:
        """`call(facts collection)` (idempotent), as the interactions index runs its own
        calls: inside its operation gate, run again on a fresh client when Chroma misses
        a segment right after that index recycled the shared client (`ChromaIndex._reopening`),
        and any error left is ours (`_fault`, else `BackendUnavailableError` naming the
        location), never chromadb's: recall and every middleware turn read facts.

        Args:
            what: The operation, for the message ("query", "upsert", ...).
        """
        def once() -> _T:
            with self._op():
                return call(self._coll())

        owner = self._main or self.index
        try:
            return self._main._reopening(once) if self._main is not None else once()
        except (BackendUnavailableError, ConfigError, StorageError, ValidationError):
            raise
        except Exception as exc:
            raise owner.error_for(exc, f"facts {what}", self.index) from exc

    def _schema(self) -> None:
        with self.journal._tx() as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            if db.execute("SELECT value FROM facts_meta WHERE name='key_format'").fetchone() is None:
                self._rekey(db)
                db.execute("INSERT OR IGNORE INTO facts_meta (name, value) VALUES ('key_format', ?)", (KEY_FORMAT,))
        self._ready = True

    @staticmethod
    def _rekey(db: Any) -> None:
        """Key format 1 -> 2, in the caller's transaction: sentence facts get their claim's
        slot (question facts keep their question). Facts stored before stay as they are
        (active or superseded); the new keys apply to the corrections that come next."""
        rows = db.execute("SELECT id, key, text FROM facts").fetchall()
        moved = [(statement_key(text), fid) for fid, key, text in rows
                 if key == fact_key(text)[0] and statement_key(text) != key]
        if moved:
            db.executemany("UPDATE facts SET key=? WHERE id=?", moved)
            logger.info("facts: %d keys moved to the claim slots of key format %s", len(moved), KEY_FORMAT)

    def _has_table(self) -> bool:
        return self.journal._db().execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='facts'").fetchone() is not None

    # -- writes ------------------------------------------------------------

    def add(self, drafts: Sequence[tuple[Namespace, str, str, str]]) -> list[str]:
        """Store distilled facts ``(namespace, text, key, source id)``; return their ids.

        One transaction. A fact already stored (same namespace and normalized text)
        gains the source; a fact with the key of an active one and another answer
        supersedes it when its newest source is newer (else it is stored superseded by
        the newer one): `supersedes` decides.
        """
        ids: list[str] = []
        now = iso(utc_now())
        with self.journal._tx() as db:
            for ns, text, key, source in sorted(drafts, key=lambda d: d[3]):
                fid = _fact_id(ns, text)
                nsp = join_namespace(ns)
                row = db.execute("SELECT sources, latest_source, status FROM facts WHERE id=?", (fid,)).fetchone()
                if row is None:
                    sources = [source]
                    db.execute("INSERT INTO facts (id, namespace, key, text, sources, latest_source, created_at) "
                               "VALUES (?,?,?,?,?,?,?)", (fid, nsp, key, text, json.dumps(sources), source, now))
                    event = "created"
                else:
                    sources = sorted(set(json.loads(row[0])) | {source})
                    latest = max(row[1], source)
                    reasserted = row[2] != "active" and source > row[1]
                    db.execute("UPDATE facts SET sources=?, latest_source=?, indexed=0"
                               + (", status='active', superseded_by=NULL" if reasserted else "") + " WHERE id=?",
                               (json.dumps(sources), latest, fid))
                    event = "created" if reasserted else "updated"
                    if not reasserted and row[2] != "active":
                        ids.append(fid)
                        continue
                _history(db, fid, event, nsp, {"text": text, "key": key, "sources": sources})
                self._supersede(db, fid, nsp, key, text)
                ids.append(fid)
        return ids

    @staticmethod
    def _supersede(db: Any, fid: str, nsp: str, key: str, text: str) -> None:
        me = db.execute("SELECT latest_source, status FROM facts WHERE id=?", (fid,)).fetchone()
        for oid, otext, olatest in db.execute(
                "SELECT id, text, latest_source FROM facts WHERE namespace=? AND key=? AND status='active' AND id<>?",
                (nsp, key, fid)).fetchall():
            if me[1] != "active":
                return
            if _is_slot(key):
                new_claim, old_claim = parse_claim(text), parse_claim(otext)
                if new_claim is None or old_claim is None or not contradicts(new_claim, old_claim):
                    continue  # "my sailboat" and "his sailboat" share a slot, not an owner
            elif not supersedes(key, nsp, _answer(text, key), key, nsp, _answer(otext, key)):
                continue
            old, new = (oid, fid) if olatest <= me[0] else (fid, oid)
            db.execute("UPDATE facts SET status='superseded', superseded_by=?, indexed=0 WHERE id=?", (new, old))
            _history(db, old, "superseded", nsp, {"superseded_by": new})
            me = db.execute("SELECT latest_source, status FROM facts WHERE id=?", (fid,)).fetchone()

    def forget_sources(self, ids: Sequence[str], *, event: str = "forgotten") -> list[str]:
        """Delete every fact one of whose sources is in `ids` (rows, history content;
        Chroma at the next `sync`); their ids."""
        if not ids or not self._ready and not self._has_table():
            return []
        with self.journal._tx() as db:
            return forget_in_transaction(db, ids, event)

    def sync(self) -> int:
        """Bring the facts collection in line with the table (embed new facts, delete
        superseded and forgotten ones); how many records changed. Only the process that
        writes the index calls it."""
        if not self._ready and not self._has_table():
            return 0
        with self._sync_lock:
            db = self.journal._db()
            deleted = [r[0] for r in db.execute("SELECT id FROM facts_deleted")]
            stale = [r[0] for r in db.execute("SELECT id FROM facts WHERE indexed=0 AND status<>'active'")]
            fresh = db.execute("SELECT id, namespace, text, created_at FROM facts "
                               "WHERE indexed=0 AND status='active'").fetchall()
            if deleted or stale:
                self._chroma("delete", lambda coll: coll.delete(ids=deleted + stale))
            if fresh:
                vectors = self.index.embed_texts([r[2] for r in fresh], self.index.embeddings)
                metadatas = []
                for _fid, nsp, _text, created in fresh:
                    ns = parse_namespace(nsp)
                    md: dict[str, Any] = {"ns": nsp, "ns_depth": len(ns),
                                          "created_at": datetime.fromisoformat(created).timestamp()}
                    md.update({f"ns_{i}": label for i, label in enumerate(ns)})
                    metadatas.append(md)
                self._chroma("upsert", lambda coll: coll.upsert(
                    ids=[r[0] for r in fresh], embeddings=vectors, documents=[r[2] for r in fresh],
                    metadatas=metadatas))
            with self.journal._tx() as wdb:
                done = stale + [r[0] for r in fresh]
                wdb.executemany("UPDATE facts SET indexed=1 WHERE id=?", [(i,) for i in done])
                wdb.executemany("DELETE FROM facts_deleted WHERE id=?", [(i,) for i in deleted])
            return len(deleted) + len(done)

    # -- reads -------------------------------------------------------------

    def _row(self, row: Sequence[Any]) -> Fact:
        fid, nsp, key, text, sources, created, status, by = row
        return Fact(id=fid, namespace=parse_namespace(nsp), text=text, key=key, sources=tuple(json.loads(sources)),
                    created_at=datetime.fromisoformat(created), status=status, superseded_by=by)

    _COLS = "id, namespace, key, text, sources, created_at, status, superseded_by"

    def _expired(self, facts: Sequence[Fact]) -> set[str]:
        """Ids of those `facts` one of whose sources is no longer live: expired, not yet
        swept (a forgotten source took its facts with it in its transaction). Their text
        is what the expired interaction said, so it is never served, like the source."""
        ids = sorted({s for f in facts for s in f.sources})
        live: set[str] = set()
        for start in range(0, len(ids), 500):  # bounded IN lists
            live.update(self.journal.get_many(ids[start:start + 500]))
        return {f.id for f in facts if not set(f.sources) <= live}

    def get(self, fact_id: str) -> Fact | None:
        """The fact, unless unknown, forgotten or distilled from an expired interaction."""
        if not self._ready and not self._has_table():
            return None
        row = self.journal._db().execute(f"SELECT {self._COLS} FROM facts WHERE id=?", (fact_id,)).fetchone()
        fact = self._row(row) if row else None
        return None if fact is None or self._expired([fact]) else fact

    def list(self, namespace: Namespace | None = None, *, include_superseded: bool = False) -> list[Fact]:
        """Facts (of one namespace), oldest first; active only unless told otherwise;
        never one distilled from an expired interaction."""
        if not self._ready and not self._has_table():
            return []
        clauses, params = ["1=1"], []
        if namespace is not None:
            clauses.append("namespace=?")
            params.append(join_namespace(namespace))
        if not include_superseded:
            clauses.append("status='active'")
        rows = self.journal._db().execute(
            f"SELECT {self._COLS} FROM facts WHERE {' AND '.join(clauses)} ORDER BY created_at, id", params)
        facts = [self._row(r) for r in rows]
        expired = self._expired(facts)
        return [f for f in facts if f.id not in expired]

    def query(self, vector: list[float], namespace: Namespace, k: int, *,
              include_descendants: bool = False) -> list[Memory]:
        """The `k` active facts of the namespace nearest to `vector`, best first. A fact
        whose source is no longer live (forgotten, expired) is never returned."""
        if not self._ready and not self._has_table():
            return []
        where = namespace_where(namespace, include_descendants=include_descendants)

        def nearest(coll: Any) -> list[tuple[str, float]]:
            if not coll.count():
                return []
            res = coll.query(query_embeddings=[vector], n_results=k, include=["distances"], where=where)
            return list(zip(res["ids"][0], res["distances"][0], strict=True))

        hits = self._chroma("query", nearest)
        if not hits:
            return []
        db = self.journal._db()
        rows = {r[0]: self._row(r) for r in db.execute(
            f"SELECT {self._COLS} FROM facts WHERE status='active' AND id IN ({','.join('?' * len(hits))})",
            [h[0] for h in hits])}
        sources = {s for f in rows.values() for s in f.sources}
        live = set(self.journal.get_many(sorted(sources)))
        out = []
        for fid, dist in hits:
            f = rows.get(fid)
            if f is None or not set(f.sources) <= live:
                continue
            out.append(Memory(id=f.id, text=f.text, score=1.0 - float(dist), namespace=f.namespace,
                              created_at=f.created_at, kind="fact",
                              metadata={"sources": list(f.sources), "key": f.key}))
        return out

    def history(self, fact_id: str) -> list[HistoryEvent]:
        """Every version of the fact and of the facts it superseded or that superseded
        it, directly or down the chain, oldest first; without the content of a fact
        distilled from an expired interaction (its text is that interaction's)."""
        db = self.journal._db()
        row = db.execute("SELECT namespace, key FROM facts WHERE id=?", (fact_id,)).fetchone()
        ids = [fact_id]
        if row is not None:  # the supersession chain through the fact, within its slot
            links = db.execute("SELECT id, superseded_by FROM facts WHERE namespace=? AND key=?", row).fetchall()
            chain, grew = {fact_id}, True
            while grew:
                grew = False
                for a, b in links:
                    if b is not None and (a in chain) != (b in chain):
                        chain |= {a, b}
                        grew = True
            ids = sorted(chain)
        marks = ",".join("?" * len(ids))
        hidden = self._expired([self._row(r) for r in db.execute(
            f"SELECT {self._COLS} FROM facts WHERE id IN ({marks})", ids).fetchall()])
        rows = db.execute(f"SELECT id, event, at, namespace, data FROM history WHERE id IN "
                          f"({marks}) ORDER BY seq", ids).fetchall()
        return [HistoryEvent(id=r[0], event=r[1], at=datetime.fromisoformat(r[2]), namespace=parse_namespace(r[3]),
                             data=json.loads(r[4]) if r[4] and r[0] not in hidden else {}) for r in rows]


def forget_in_transaction(db: Any, ids: Sequence[str], event: str = "forgotten") -> list[str]:
    """Inside the caller's transaction: delete the facts distilled from any of `ids`
    (rows and their history's content; their ids queued for Chroma in
    ``facts_deleted``); their ids. `Journal.forget` calls it in the transaction that
    deletes the interactions, so no fact outlives its source in the journal."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='facts'").fetchone() is None:
        return []
    wanted = set(ids)
    gone = [(fid, ns) for fid, ns, sources in db.execute("SELECT id, namespace, sources FROM facts").fetchall()
            if wanted & set(json.loads(sources))]
    for fid, ns in gone:
        db.execute("DELETE FROM facts WHERE id=?", (fid,))
        db.execute("INSERT OR IGNORE INTO facts_deleted VALUES (?)", (fid,))
        db.execute("UPDATE history SET data=NULL WHERE id=?", (fid,))
        _history(db, fid, event, ns, None)
    return [fid for fid, _ in gone]


def forget_facts(memory: SealMemory, ids: Sequence[str], *, event: str = "forgotten") -> list[str]:
    """The hook `forget` calls with the interaction ids it forgot: deletes the facts
    distilled from any of them (table and history content -- `Journal.forget` already
    did that in its transaction -- and Chroma, now when this process writes the index,
    else at the owner's next `sync`). Returns the fact ids deleted by this call."""
    store = memory._facts
    gone = store.forget_sources(list(ids), event=event)
    if memory._take_index():  # also what `Journal.forget` queued in `facts_deleted`
        try:
            store.sync()
        except Exception:  # the rows are gone (never recalled); Chroma catches up at the next sync
            logger.warning("could not delete forgotten facts from Chroma yet", exc_info=True)
    return gone


def record_facts(memory: SealMemory, edits: Iterable[Any], interactions: Iterable[Interaction]) -> list[str]:
    """What consolidation calls after its self-edit step (``memory.facts`` on): distil
    the batch's facts into their interactions' namespaces; the stored fact ids. Never
    raises: facts are a second use of the self-edits, and a failure here must not fail
    the run that trains on them (logged; the next run's facts come in again)."""
    try:
        drafts = distill(edits, {it.id: it for it in interactions})
        # an interaction forgotten during the self-edit step gives no fact
        live = set(memory._journal.get_many(sorted({d[3] for d in drafts})))
        ids = memory._facts.add([d for d in drafts if d[3] in live])
        if ids and memory._take_index():
            memory._facts.sync()
        logger.info("facts: %d distilled from %d self-edits", len(ids), len(drafts))
        return ids
    except Exception:
        logger.warning("facts: could not record the facts of this self-edit batch", exc_info=True)
        return []
