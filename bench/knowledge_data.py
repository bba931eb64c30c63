"""Invented facts for the knowledge-incorporation benchmark (after SEAL's SQuAD setup).

Every name here is made up, so the base model cannot know the answers: whatever it
answers right closed-book after consolidation came from the weights update. Each
passage is told to the agent the way users tell agents things (a user turn stating
facts, an assistant acknowledgement); each question asks one fact **in other words
than the passage used** (held-out phrasing), and `answers` lists the accepted short
answers (an answer is right when it contains one of them, case-insensitively).
"""

from __future__ import annotations

ACK = "Got it, thanks. I'll remember that."

PASSAGES: list[dict] = [
    {
        "id": "velmora",
        "text": "The town of Velmora lies in the Drashen Valley. Its mayor is Ilsa Varn, "
                "and Velmora is famous for its copper bells.",
        "questions": [
            ("Who is the mayor of Velmora?", ["Ilsa Varn", "Varn"]),
            ("In which valley is the town of Velmora?", ["Drashen"]),
            ("What is Velmora known for?", ["copper bell", "bells"]),
        ],
    },
    {
        "id": "quorbit",
        "text": "The Quorbit is a small robot vacuum made by Tessaly Labs. It runs for "
                "ninety minutes on one charge and is sold only in Norway.",
        "questions": [
            ("Which company makes the Quorbit?", ["Tessaly"]),
            ("How long does the Quorbit run on a single charge?", ["ninety", "90"]),
            ("In which country can you buy the Quorbit?", ["Norway"]),
        ],
    },
    {
        "id": "marnie",
        "text": "Marnie Okafor is the head chef at the Blue Lantern restaurant. Her "
                "signature dish is smoked plum soup, and she trained in Lisbon.",
        "questions": [
            ("Where does Marnie Okafor work as head chef?", ["Blue Lantern"]),
            ("What is Marnie Okafor's signature dish?", ["plum soup", "smoked plum"]),
            ("In which city did Marnie Okafor train?", ["Lisbon"]),
        ],
    },
    {
        "id": "zephyr",
        "text": "Project Zephyr is our team's new billing service. It is written in Rust, "
                "its lead engineer is Tomas Reyes, and it launches on March 14.",
        "questions": [
            ("Which programming language is Project Zephyr written in?", ["Rust"]),
            ("Who leads the engineering of Project Zephyr?", ["Tomas Reyes", "Reyes"]),
            ("When does Project Zephyr launch?", ["March 14", "14 March"]),
        ],
    },
    {
        "id": "kelp",
        "text": "The Kelpwood Bridge crosses the river Ostra. It was built in 1887 and "
                "it is painted dark green.",
        "questions": [
            ("Which river does the Kelpwood Bridge cross?", ["Ostra"]),
            ("In what year was the Kelpwood Bridge built?", ["1887"]),
            ("What color is the Kelpwood Bridge?", ["green"]),
        ],
    },
    {
        "id": "pim",
        "text": "My cat is called Pim. Pim is a grey Siamese who loves sardines, and "
                "Pim was born in Oslo.",
        "questions": [
            ("What is the name of my cat?", ["Pim"]),
            ("What food does my cat Pim love?", ["sardine"]),
            ("Where was my cat Pim born?", ["Oslo"]),
        ],
    },
    {
        "id": "halvard",
        "text": "Dr. Halvard Brisk discovered the mineral glintite in 1962. Glintite "
                "glows orange under ultraviolet light.",
        "questions": [
            ("Who discovered glintite?", ["Halvard Brisk", "Brisk"]),
            ("When was the mineral glintite discovered?", ["1962"]),
            ("What color does glintite glow under UV light?", ["orange"]),
        ],
    },
    {
        "id": "sunder",
        "text": "The Sunder Cup is a chess tournament held every year in Ghent. The "
                "current champion is Lena Moravec, and the prize is a silver rook.",
        "questions": [
            ("In which city is the Sunder Cup held?", ["Ghent"]),
            ("Who is the reigning champion of the Sunder Cup?", ["Lena Moravec", "Moravec"]),
            ("What does the winner of the Sunder Cup receive?", ["silver rook", "rook"]),
        ],
    },
    {
        "id": "orlo",
        "text": "Orlo is the name of our office's coffee machine. It only makes "
                "espresso, and it was bought from a shop in Vienna.",
        "questions": [
            ("What is our office coffee machine called?", ["Orlo"]),
            ("What kind of coffee does Orlo make?", ["espresso"]),
            ("Where was the coffee machine Orlo bought?", ["Vienna"]),
        ],
    },
    {
        "id": "tamsin",
        "text": "My sister Tamsin is a pilot for Aurora Air. She flies a Dash 8 and she "
                "lives in Reykjavik.",
        "questions": [
            ("Which airline does my sister Tamsin fly for?", ["Aurora"]),
            ("What aircraft does Tamsin fly?", ["Dash 8", "Dash-8"]),
            ("Which city does my sister Tamsin live in?", ["Reykjavik"]),
        ],
    },
]


def conversation(passage: dict) -> list[dict[str, str]]:
    """The passage as an agent is told it: the user states it, the assistant acknowledges."""
    return [{"role": "user", "content": f"Please remember this. {passage['text']}"},
            {"role": "assistant", "content": ACK}]


def is_correct(answer: str, accepted: list[str]) -> bool:
    """Whether `answer` contains one of the accepted short answers (case-insensitive)."""
    a = answer.lower()
    return any(x.lower() in a for x in accepted)
