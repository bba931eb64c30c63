"""Invented facts for the continual-learning benchmark (`bench/bench_continual.py`).

Sixteen passages told the way a person tells an assistant about their life (not the
encyclopaedic passages of `bench/knowledge_data.py`), every name made up so the base
model cannot know the answers. Each passage has 2-3 closed-book questions asked **in
other words than the passage used**, with the accepted short answers (right when the
normalized answer contains one: `is_correct`), and ``markers``: its distinctive invented names, what
the benchmark looks for in the answers to *other* questions to count bleed.

`CORRECTION` is told in a later conversation and changes the first passage's boat name
(A -> B): afterwards its name question accepts B only, and A in any answer is wrong.
"""

from __future__ import annotations

import re
import unicodedata

ACK = "Got it, thanks. I'll remember that."

PASSAGES: list[dict] = [
    {
        "id": "sailboat",
        "text": "My brother Dario's sailboat is called the Tumbleweed. He keeps it in Brighton.",
        "questions": [
            ("What is the name of Dario's sailboat?", ["Tumbleweed"]),
            ("In which town does Dario moor his boat?", ["Brighton"]),
        ],
        "markers": ["Tumbleweed"],
    },
    {
        "id": "alpaca",
        "text": "My neighbour Ottilie breeds alpacas. Her oldest alpaca is named Biscuit Royale, "
                "and she sells the wool at the Fenwick market.",
        "questions": [
            ("What is Ottilie's oldest alpaca called?", ["Biscuit Royale", "Biscuit"]),
            ("At which market does Ottilie sell her wool?", ["Fenwick"]),
            ("What animals does Ottilie raise?", ["alpaca"]),
        ],
        "markers": ["Biscuit Royale", "Fenwick"],
    },
    {
        "id": "bookclub",
        "text": "Our book club meets every second Thursday at the Crooked Lamp café. "
                "This month we're reading a novel called The Glass Orchard.",
        "questions": [
            ("Where does the book club get together?", ["Crooked Lamp"]),
            ("Which novel is the book club reading this month?", ["Glass Orchard"]),
        ],
        "markers": ["Crooked Lamp", "Glass Orchard"],
    },
    {
        "id": "tomato",
        "text": "My aunt Wilhelmina grows a purple tomato she calls Midnight Duchess. "
                "She won first prize with it at the Harrowgate show last summer.",
        "questions": [
            ("What name did Wilhelmina give her purple tomato?", ["Midnight Duchess"]),
            ("Where did Wilhelmina win first prize?", ["Harrowgate"]),
        ],
        "markers": ["Midnight Duchess", "Harrowgate"],
    },
    {
        "id": "violin",
        "text": "My daughter's violin teacher is Mr. Kasprzak. Lessons are on Saturday mornings "
                "and he charges forty dollars an hour.",
        "questions": [
            ("Who teaches my daughter the violin?", ["Kasprzak"]),
            ("How much does the violin teacher charge per hour?", ["forty", "40"]),
            ("On which day are the violin lessons?", ["Saturday"]),
        ],
        "markers": ["Kasprzak"],
    },
    {
        "id": "motorbike",
        "text": "I finally named my vintage motorbike: she's called Copperhead. "
                "I bought her in Valparaíso back in 2019.",
        "questions": [
            ("What did I name my old motorbike?", ["Copperhead"]),
            ("In which city did I buy the motorbike?", ["Valparaíso", "Valparaiso"]),
        ],
        "markers": ["Copperhead", "Valpara"],
    },
    {
        "id": "lighthouse",
        "text": "My cousin Feodora is a lighthouse keeper on Skellig Brae. "
                "She has a parrot called Admiral Pickle.",
        "questions": [
            ("On which island does Feodora keep the lighthouse?", ["Skellig Brae", "Skellig"]),
            ("What is the name of Feodora's parrot?", ["Admiral Pickle", "Pickle"]),
            ("What is Feodora's job?", ["lighthouse"]),
        ],
        "markers": ["Skellig", "Admiral Pickle"],
    },
    {
        "id": "shed",
        "text": "The code for the garden shed padlock is 7-4-1-9. "
                "The spare key hangs behind the blue watering can.",
        "questions": [
            ("What's the combination of the shed's padlock?", ["7-4-1-9", "7419"]),
            ("Where is the spare key to the shed kept?", ["watering can"]),
        ],
        "markers": ["7-4-1-9", "7419"],
    },
    {
        "id": "sourdough",
        "text": "Our family's sourdough starter is named Gerald and he is twelve years old. "
                "Grandma Ines started him in Porto.",
        "questions": [
            ("What do we call our sourdough starter?", ["Gerald"]),
            ("In which city was our sourdough starter begun?", ["Porto"]),
            ("How old is the family sourdough starter?", ["twelve", "12"]),
        ],
        "markers": ["Gerald", "Porto"],
    },
    {
        "id": "running",
        "text": "My running club is called the Dawn Otters. We train along the Velden canal, "
                "and our coach is Priya Nandakumar.",
        "questions": [
            ("What is the name of my running club?", ["Dawn Otters"]),
            ("Who coaches my running club?", ["Nandakumar", "Priya"]),
            ("Along which canal does the running club train?", ["Velden"]),
        ],
        "markers": ["Dawn Otters", "Velden", "Nandakumar"],
    },
    {
        "id": "boardgame",
        "text": "My favourite board game is Lanterns of Kesh. "
                "I play it with my friend Tobiah every Friday night.",
        "questions": [
            ("Which board game do I like best?", ["Lanterns of Kesh", "Kesh"]),
            ("Who do I play board games with on Fridays?", ["Tobiah"]),
        ],
        "markers": ["Lanterns of Kesh", "Tobiah"],
    },
    {
        "id": "dentist",
        "text": "My dentist, Dr. Okonkwo-Hale, moved her practice to Juniper Street. "
                "My next cleaning is on the 9th of May.",
        "questions": [
            ("What is my dentist's name?", ["Okonkwo"]),
            ("On which street is my dentist's practice now?", ["Juniper"]),
            ("When is my next dental cleaning?", ["9th of May", "May 9", "9 May"]),
        ],
        "markers": ["Okonkwo", "Juniper"],
    },
    {
        "id": "catfood",
        "text": "Our cat Pistachio only eats salmon pâté, and only from a brand called Moonwhisker.",
        "questions": [
            ("Which brand of cat food does Pistachio eat?", ["Moonwhisker"]),
            ("What is our cat's name?", ["Pistachio"]),
        ],
        "markers": ["Moonwhisker", "Pistachio"],
    },
    {
        "id": "canoe",
        "text": "My grandfather built a canoe out of cedar in 1974 and named it the Little Heron.",
        "questions": [
            ("What is my grandfather's canoe called?", ["Little Heron"]),
            ("What wood is my grandfather's canoe made of?", ["cedar"]),
            ("In what year did my grandfather build his canoe?", ["1974"]),
        ],
        "markers": ["Little Heron", "1974"],
    },
    {
        "id": "cabin",
        "text": "The Wi-Fi network at our cabin is called FoxHollow, and the cabin is right by Lake Tamsin.",
        "questions": [
            ("What's the name of the Wi-Fi at our cabin?", ["FoxHollow", "Fox Hollow"]),
            ("Which lake is our cabin next to?", ["Tamsin"]),
        ],
        "markers": ["FoxHollow", "Fox Hollow", "Tamsin"],
    },
    {
        "id": "band",
        "text": "My sister Rosalind plays bass in a band called The Paper Comets. "
                "Their first gig was at the Ember Room.",
        "questions": [
            ("What is the name of Rosalind's band?", ["Paper Comets"]),
            ("Which instrument does Rosalind play?", ["bass"]),
            ("Where did Rosalind's band play their first concert?", ["Ember Room"]),
        ],
        "markers": ["Paper Comets", "Ember Room"],
    },
]

# The correction, told in a later conversation: the first passage's boat was renamed.
CORRECTION: dict = {
    "passage": "sailboat",
    "text": "Oh, an update. My brother Dario's sailboat is now called the Saltpetal. He renamed it this spring.",
    "question": "What is the name of Dario's sailboat?",  # the passage's name question
    "new": ["Saltpetal"],  # B: what the question accepts after the correction
    "old": ["Tumbleweed"],  # A: wrong in any answer after the correction
}


def conversation(text: str) -> list[dict[str, str]]:
    """How the benchmark tells the agent something: the user's message and an acknowledgement."""
    return [{"role": "user", "content": text}, {"role": "assistant", "content": ACK}]


def normalize(text: str) -> str:
    """Casefold, strip accents and punctuation, collapse whitespace."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def is_correct(answer: str, accepted: list[str]) -> bool:
    """Whether the normalized answer contains a normalized accepted answer (a substring,
    like bench_knowledge: "alpacas" answers "alpaca")."""
    text = normalize(answer)
    return any(normalize(a) in text for a in accepted if normalize(a))


def contains_any(answer: str, accepted: list[str]) -> bool:
    """Whether the normalized answer contains a normalized accepted answer (as whole words)."""
    padded = f" {normalize(answer)} "
    return any(f" {normalize(a)} " in padded for a in accepted if normalize(a))
