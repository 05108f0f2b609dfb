"""A varied, reproducible set of chat instructions for self-distillation of a chat model.

No dataset is downloaded: instructions are built from task templates x topics, and the
input-grounded tasks (summarise, rewrite, answer from a passage) use prose from the docstrings
of this interpreter's standard library as their passages.

Held out, never trained on (`split="heldout"`):
* whole categories the training set lacks: `poem` and `code`;
* every topic in `HELDOUT_TOPICS`, in every category;
* the project's example prompts (`assets/prompts/*.jsonl`) are not generated here at all.
"""

from __future__ import annotations

import ast
import random
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

TOPICS = (
    "photosynthesis", "the water cycle", "volcanoes", "black holes", "the moon landing", "honey bees",
    "recycling", "sleep", "running shoes", "learning a language", "saving money", "bread baking",
    "coffee", "tea", "bicycles", "electric cars", "rainforests", "deserts", "the Roman Empire",
    "ancient Egypt", "the printing press", "vaccines", "the immune system", "earthquakes",
    "climate change", "solar panels", "wind turbines", "the internet", "email etiquette",
    "job interviews", "public speaking", "time management", "meditation", "houseplants",
    "dogs", "cats", "birds migrating", "the ocean tides", "coral reefs", "chess", "football",
    "the Olympic Games", "jazz music", "the guitar", "painting with watercolours", "photography",
    "camping", "hiking safety", "first aid", "healthy breakfasts", "drinking water", "vitamins",
    "the human heart", "the brain", "DNA", "gravity", "magnets", "electricity at home", "rainbows",
    "snowflakes", "thunderstorms", "maps", "trains", "airplanes", "submarines", "libraries",
    "museums", "friendship", "moving to a new city", "budgeting for students", "online privacy",
    "passwords", "spreadsheets", "writing a CV", "composting", "gardening tomatoes", "bees and flowers",
    "penguins", "elephants", "the Great Wall of China", "pyramids", "mountains", "rivers",
)
HELDOUT_TOPICS = frozenset({"dogs", "jazz music", "volcanoes", "online privacy", "bicycles", "the brain",
                            "penguins", "composting", "chess", "tea"})

# category -> templates ({t} = topic)
TEMPLATES: dict[str, tuple[str, ...]] = {
    "explain": ("Explain {t} in simple terms.", "How does {t} work? Keep it short.",
                "Explain {t} to a ten-year-old.", "What is the most important thing to know about {t}?",
                "Give me a short overview of {t}."),
    "list": ("Give me three facts about {t}.", "List five tips related to {t}.",
             "What are some common mistakes people make with {t}?", "Name four interesting things about {t}.",
             "Give me a short checklist about {t}."),
    "compare": ("What are the pros and cons of {t}?", "Compare {t} today with fifty years ago.",
                "Why do some people love {t} and others do not?"),
    "write": ("Write a short paragraph about {t}.", "Write a friendly email to a friend about {t}.",
              "Write a short story that involves {t}.", "Write a tweet about {t}.",
              "Write a short product description for a book about {t}."),
    "advice": ("I want to get better at {t}. Where should I start?", "How can I teach my kids about {t}?",
               "What should a beginner know about {t}?"),
    "question": ("Why does {t} matter?", "What is a surprising fact about {t}?",
                 "Who should learn about {t}, and why?", "What questions do people often ask about {t}?"),
    "poem": ("Write a short poem about {t}.", "Write a haiku about {t}.", "Write a limerick about {t}."),
    "code": ("Write a Python function related to {t}, with a docstring.",
             "Write a small Python class that models {t}.",
             "Write a Python script that prints three facts about {t}."),
}
HELDOUT_CATEGORIES = frozenset({"poem", "code"})
GROUNDED = {
    "summarise": "Summarise the following text in two sentences.\n\nText:\n{p}",
    "rewrite": "Rewrite the following text so it is easier to read.\n\nText:\n{p}",
    "notes": "Answer the question using only this passage.\n\nPassage:\n{p}\n\nQuestion: What is this passage about, "
             "and what does it say one should do?",
    "keywords": "List the key terms in this passage and explain each briefly.\n\nPassage:\n{p}",
}


@dataclass(frozen=True)
class Instruction:
    id: str
    category: str
    split: str  # "train" or "heldout"
    prompt: str


def _passages(limit: int, rng: random.Random) -> list[tuple[str, str]]:
    """(module name, paragraph) pairs: prose paragraphs of 40-140 words from stdlib docstrings."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, str]] = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        docs = [ast.get_docstring(node) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))]
        for para in (p for doc in docs if doc for p in re.split(r"\n\s*\n", doc)):
            text = " ".join(para.split())
            words = text.split()
            if 40 <= len(words) <= 140 and not re.search(r"[>]{3}|::|\|", text) and text.count("(") < 6:
                found.append((path.stem, text))
    rng.shuffle(found)
    return found[:limit]


def build(seed: int = 0, grounded: int = 400) -> list[Instruction]:
    """Every (template, topic) pair, plus `grounded` passage tasks, in a seeded order."""
    rng = random.Random(seed)
    out: list[Instruction] = []
    for category, templates in TEMPLATES.items():
        for ti, template in enumerate(templates):
            for topic in TOPICS:
                held = category in HELDOUT_CATEGORIES or topic in HELDOUT_TOPICS
                out.append(Instruction(f"{category}-{ti}-{TOPICS.index(topic)}", category,
                                       "heldout" if held else "train", template.format(t=topic)))
    passages = _passages(grounded, rng)
    kinds = sorted(GROUNDED)
    for i, (module, text) in enumerate(passages):
        kind = kinds[i % len(kinds)]
        # passages of a few modules are held out, like the topics
        held = int.from_bytes(module.encode()[:4].ljust(4, b"_"), "little") % 10 == 0
        out.append(Instruction(f"{kind}-{module}-{i}", kind, "heldout" if held else "train",
                               GROUNDED[kind].format(p=text)))
    rng.shuffle(out)
    return out


if __name__ == "__main__":
    items = build()
    by = {}
    for it in items:
        by.setdefault((it.split, it.category), 0)
        by[(it.split, it.category)] += 1
    for key in sorted(by):
        print(key, by[key])
    print(len(items), "instructions", file=sys.stderr)
