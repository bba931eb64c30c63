"""Provenance: which words of an exchange the user and its tools said, and which the model only guessed.

The memory learns what the user and tools said, not what the model guessed. A reply
of the model is knowledge -- training data for the self-edits, a source of facts -- only
when it is *grounded* (every content word of it is supported by the user turns and tool
results of its exchange: "Got it, your cat is called Miso.") or the user *confirmed* it
(feedback > 0). "Miso is a Japanese word that means cat", the reply of a 135M model to
"Please remember this: my cat is called Miso.", adds words nobody said: it stays in the
log and in recall (marked as the model's reply), but nothing is trained on it. A reply
the user marked wrong (feedback < 0) is never knowledge.

Support is the same lenient word match the self-edit filters use for grounding
(`unsupported_words`: inflections count, function and framing words need no support),
so one rule decides what a self-edit and what a reply may assert.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ACK_WORDS", "content_words", "is_acknowledgement", "reply_is_knowledge", "source_text",
           "unsupported_words"]

# Function words, and words that frame a question or a restatement without stating
# anything ("what is the name of ...", "... is known for ..."): they need no support.
_FUNCTION_WORDS = frozenset("""
a an the and or but nor so yet if then than that this these those there here of in on at to from by
for with without about into onto over under after before during since until while as per via
is are was were be been being am do does did done has have had having will would shall should can
could may might must it its it's itself he him his she her hers they them their theirs we us our
you your i me my mine who whom whose which what when where why how one ones also very just only
not no yes all any each every some such both either neither other another more most many much
own same too s t d ll m re ve
name names named called call known kind type sort year years color colour city country place
located location famous thing things someone something person people
""".split())
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
_STEM = 5  # "discovered"/"discovery": a shared 5-letter prefix counts as support
_PREFIX_MIN = 4  # "bell"/"bells": a word of 4+ letters that begins the other counts too


def content_words(text: str) -> list[str]:
    """The lowercased words of `text` that carry content (function and framing words left out)."""
    return [w for w in _TOKEN.findall(text.lower()) if w not in _FUNCTION_WORDS]


def unsupported_words(text: str, source: str) -> list[str]:
    """Content words of `text` that `source` does not contain (grounding check).

    A self-edit restates what an exchange said; a word it adds that the exchange never
    used (a city, a date, a name) is almost always a small model's invention. Support
    is lenient on inflection: a word is supported when the source has it, or a word
    sharing its first five letters (``discovered`` / ``discovery``), or a word of four
    or more letters that begins the other (``bell`` / ``bells``), so restatements may
    conjugate and pluralise freely.

    Returns:
        The unsupported words, in order, without repeats ([] means grounded).
    """
    have = set(_TOKEN.findall(source.lower()))
    stems = {w[:_STEM] for w in have if len(w) >= _STEM}
    out: list[str] = []
    for w in content_words(text):
        if w in have or (len(w) >= _STEM and w[:_STEM] in stems) or w in out:
            continue
        if len(w) >= _PREFIX_MIN and any(
                len(h) >= _PREFIX_MIN and (h.startswith(w) or w.startswith(h)) for h in have):
            continue
        out.append(w)
    return out


# Words that acknowledge without stating anything ("Got it, thanks. I'll remember that.").
ACK_WORDS = frozenset("""
got get thanks thank remember remembered noted note okay ok sure great understood certainly
absolutely welcome sounds sound good glad happy help anything else keep mind recorded saved
done perfect alright right will i'll ll that's course of noting cool nice awesome yes wonderful
""".split())


def is_acknowledgement(text: str) -> bool:
    """Whether `text` only acknowledges (every content word is an acknowledgement word)."""
    return all(w in ACK_WORDS for w in content_words(text))


def source_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """What the user and the tools said in an exchange: its user turns and tool results."""
    return "\n".join((m.get("content") or "") for m in messages if m.get("role") in ("user", "tool"))


def reply_is_knowledge(reply: str, messages: Sequence[Mapping[str, Any]], feedback: float | None) -> bool:
    """Whether an assistant reply of the exchange `messages` may be learned from.

    Confirmed (feedback > 0): yes. Marked wrong (feedback < 0): no. Otherwise only when
    grounded: its content words, acknowledgements aside, are all supported by what the
    user and the tools said in the same exchange (`source_text`).
    """
    if feedback is not None and feedback != 0:
        return feedback > 0
    words = [w for w in content_words(reply) if w not in ACK_WORDS]
    return not unsupported_words(" ".join(words), source_text(messages))
