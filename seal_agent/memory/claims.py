"""What a fact sentence claims, so that a correction replaces the fact it corrects.

A stored fact is superseded when a newer fact of its namespace says something else
about *the same thing*: the same subject and relation, another value ("My brother's
sailboat is called the Tumbleweed" -> "His sailboat is called the Saltpetal"). A prefix
of the sentence is not enough to tell (the first key of `seal_agent.memory.facts`:
"his sailboat is" and "my brother s sailboat is" never met, while "The Saltpetal is my
brother's sailboat" and "The Saltpetal is a sailboat" did). `parse_claim` reads a
sentence as a `Claim`:

* ``relation``: the verb phrase, canonical ("is called", "is named", "'s name is" and
  the identity copula "X is my dog" are all ``identity``; "lives in" and "moved to" are
  ``lives_in``; ...). Only *one-valued* relations make claims: a person lives in one
  place at a time, but likes, has and plays many things, so "I like tea" and "I like
  coffee" never supersede each other (they parse to None).
* ``head``: what the claim is about, without its owner ("sailboat" in "my brother's
  sailboat"), and ``owner``: whose it is ("my brother's", "his", "" for "the").
* ``value``: the rest.

Two claims are about the same thing (`same_slot`) when head and relation are equal and
the owners are compatible: equal, one of them unstated ("the wifi password" / "our wifi
password"), or a third-person pronoun against a named owner ("his" / "my brother's":
the pronoun may refer to the brother). "My" against "his" is not compatible. A newer
claim `contradicts` an older one in the same slot when its value differs and is not a
refinement of it ("Paris" -> "Paris, France" adds, it does not correct).

Copulas ("is") are one-valued only where the value identifies something: a proper name
or a number ("My manager is Priya", "The rent is 1200 euros"), or the subject is a
preference ("my favourite colour"). "My dog is a beagle" (indefinite) and "My sister
is tall" (an adjective) describe and never supersede. A number with a unit keeps the
unit in the slot ("34 years old" and "170 cm tall" are different slots).

Why a rule and not embedding similarity: on the labelled pairs in
``bench/data/same_fact_pairs.jsonl`` the cosine similarity of "my cat is called" and
"my dog is called" is as high as that of true paraphrases, and a false supersession
silently hides a true fact, which is worse than a missed one (both stay active and
recall shows both). ``bench/bench_supersession.py`` measures precision and recall of
this rule against the prefix key it replaced.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["Claim", "contradicts", "parse_claim", "same_slot"]

# Leading discourse markers of a correction, and fillers that change no meaning.
_LEAD = {"actually", "no", "correction", "update", "well", "oh", "so", "sorry", "btw", "now", "ok", "okay"}
_FILLER = {"now", "actually", "currently", "still", "really", "just", "also"}
_SUBJECT_FILLER = {"new", "current", "present"}
_DETERMINERS = {"the", "a", "an", "this", "that", "these", "those"}
_POSSESSIVES = {"my", "our", "your", "his", "her", "their", "its"}
_THIRD_PERSON = {"his", "her", "their", "its"}
_PREFERENCE = {"favourite", "favorite", "preferred"}

# Verb phrases of one-valued relations, longest first within each; canonical names.
_RELATIONS: tuple[tuple[tuple[str, ...], str], ...] = tuple(
    (tuple(phrase.split()), canon)
    for canon, phrases in (
        ("identity", ("is called", "is named", "are called", "are named", "was called", "was named",
                      "is known as", "goes by")),
        ("lives_in", ("is living in", "lives in", "live in", "moved to", "has moved to", "have moved to",
                      "resides in", "reside in", "is staying in")),
        ("works_at", ("is working at", "is working for", "works at", "works for", "work at", "work for",
                      "is employed at", "is employed by")),
        ("born_in", ("was born in", "were born in", "was born on", "were born on")),
        ("located_in", ("is located in", "is based in", "are located in", "are based in", "is located at")),
        ("starts_at", ("starts at", "start at", "begins at", "begin at", "starts on", "begins on")),
        ("ends_at", ("ends at", "end at", "finishes at", "finish at", "ends on")),
        ("leaves_at", ("leaves at", "leave at", "departs at", "depart at", "leaves on", "departs on")),
        ("arrives_at", ("arrives at", "arrive at", "lands at", "arrives on")),
        ("drives", ("drives", "drive")),
        ("costs", ("costs", "cost")),
        ("copula", ("is", "are", "was", "were", "am")),
    )
    for phrase in phrases
)
_MAX_PHRASE = max(len(p) for p, _ in _RELATIONS)
_BY_PHRASE = {p: c for p, c in _RELATIONS}

_TOKEN = re.compile(r"\d+(?:[.,:\-/]\d+)*[^\W_]*|[^\W_]+(?:['’][^\W_]+)*['’]?", re.UNICODE)


@dataclass(frozen=True)
class Claim:
    """One sentence read as owner + head + relation + value (all normalized).

    Attributes:
        owner: Whose the subject is: "my", "his", "my brother's", "tom's", or "".
        head: The subject without owner and determiners: "sailboat", "favourite colour".
        relation: The canonical relation (``identity``, ``lives_in``, ``copula`` ...),
            with a number's unit after a colon for measures (``copula:euros``).
        value: What the claim says the subject is, lives in, ...
    """

    owner: str
    head: str
    relation: str
    value: str

    @property
    def slot(self) -> str:
        """What the claim is about, without the owner: equal slots are candidates for
        supersession (`same_slot` then checks the owners)."""
        return f"{self.head} | {self.relation}"


def _tokens(text: str) -> list[tuple[str, bool]]:
    """(casefolded token, written with a capital) pairs; apostrophes kept inside words."""
    text = unicodedata.normalize("NFKC", text).replace("’", "'")
    return [(m.group(0).casefold(), m.group(0)[:1].isupper()) for m in _TOKEN.finditer(text)]


def _is_possessive(token: str) -> bool:
    return token in _POSSESSIVES or token.endswith("'s") or (token.endswith("s'") and len(token) > 2)


def _split_owner(words: list[str]) -> tuple[str, list[str]]:
    """("my brother's", ["sailboat"]) of ["my", "brother's", "sailboat"]."""
    while words and words[0] in _DETERMINERS:
        words = words[1:]
    last = max((i for i, w in enumerate(words) if _is_possessive(w)), default=-1)
    if last < 0 or last == len(words) - 1:
        return "", words
    return " ".join(words[:last + 1]), words[last + 1:]


def _find_relation(words: list[str]) -> tuple[int, int, str] | None:
    """(start, end, canonical) of the first relation phrase, longest match first."""
    for i in range(1, len(words)):  # a relation never starts a sentence
        for n in range(min(_MAX_PHRASE, len(words) - i), 0, -1):
            canon = _BY_PHRASE.get(tuple(words[i:i + n]))
            if canon is not None:
                return i, i + n, canon
    return None


def _strip(words: list[str]) -> list[str]:
    while words and words[0] in _DETERMINERS:
        words = words[1:]
    return words


def parse_claim(text: str) -> Claim | None:
    """The claim a sentence makes, or None when it makes no one-valued claim (see the
    module's docstring). Pure and cheap: safe to call on every stored fact."""
    toks = _tokens(text)
    while toks and toks[0][0] in _LEAD:
        toks = toks[1:]
    toks = [t for t in toks if t[0] not in _FILLER]
    words = [w for w, _ in toks]
    found = _find_relation(words)
    if found is None:
        return None
    start, end, relation = found
    subject, value = words[:start], _strip(words[end:])
    capitals = [cap for _, cap in toks[end:]]
    if not subject or not value:
        return None
    # "my cat's name is Tofu" is "my cat is called Tofu"
    if relation == "copula" and len(subject) >= 2 and subject[-1] == "name" and _is_possessive(subject[-2]):
        subject = subject[:-2] + [subject[-2][:-2] if subject[-2].endswith("'s") else subject[-2]]
        relation = "identity"
    if relation == "copula":
        subject_owner, _ = _split_owner(list(subject))
        if words[end:end + 1] and words[end] in {"a", "an"}:
            return None  # "my dog is a beagle": a description, many can hold
        if _is_possessive(value[0]) and not subject_owner:
            # "The Tumbleweed is my brother's sailboat": the name of my brother's sailboat
            subject, value = value, _strip(list(subject))
            relation = "identity"
        elif any(capitals) or any(c.isdigit() for c in " ".join(value)):
            numeric = (value[0][:1].isdigit() and 1 < len(value) <= 3 and value[-1].isalpha()
                       and not any(capitals[1:]))
            relation = f"copula:{value[-1]}" if numeric else "identity"
        elif not _PREFERENCE & set(subject):
            return None  # "my sister is tall": an adjective, many can hold
    owner, head = _split_owner([w for w in subject if w not in _SUBJECT_FILLER])
    if not head:
        return None
    if relation.startswith("copula") and head[0] in {"i", "we", "you", "he", "she", "they", "it"}:
        return None  # "I am 34": a description of a person, not one of their attributes
    return Claim(owner=owner, head=" ".join(head), relation=relation, value=" ".join(value))


def _owners_compatible(a: str, b: str) -> bool:
    if a == b or not a or not b:
        return True
    # "his" may be "my brother's"; "my" is never "his"
    return (a in _THIRD_PERSON and b.endswith(("'s", "s'"))) or (b in _THIRD_PERSON and a.endswith(("'s", "s'")))


def same_slot(a: Claim, b: Claim) -> bool:
    """Whether two claims are about the same thing (their values aside)."""
    return a.slot == b.slot and _owners_compatible(a.owner, b.owner)


def contradicts(newer: Claim, older: Claim) -> bool:
    """Whether `newer` corrects `older`: the same thing, another value that is not just
    a refinement (more words around the same value: "paris" -> "paris france")."""
    if not same_slot(newer, older) or newer.value == older.value:
        return False
    n, o = newer.value.split(), older.value.split()
    return not (_contains(n, o) or _contains(o, n))


def _contains(longer: list[str], shorter: list[str]) -> bool:
    k = len(shorter)
    return len(longer) > k and any(longer[i:i + k] == shorter for i in range(len(longer) - k + 1))
