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


# A second, wider training set (`build_more`): everyday tasks the first set lacks (how-to,
# arithmetic word problems, translation, stories, recipes, plans, choices) over new
# topics. Train only: the held-out topics and categories above stay out, and no example prompt of
# `assets/prompts` is generated (their arithmetic and translation items are avoided by name).
MORE_TOPICS = (
    "learning to swim", "tying a tie", "fixing a flat tyre", "making pancakes", "ironing a shirt",
    "planting a tree", "painting a room", "writing a thank-you note", "packing for a trip",
    "cleaning a laptop keyboard", "starting a book club", "training for a 5k", "baking cookies",
    "organising a closet", "making friends at work", "asking for a raise", "preparing for an exam",
    "taking notes in class", "learning to juggle", "growing herbs indoors", "saving energy at home",
    "choosing a laptop", "caring for a goldfish", "walking a dog in the rain", "planning a picnic",
    "keeping a journal", "reducing food waste", "fixing a leaky tap", "setting up a budget app",
    "brewing cold brew", "learning to draw", "making a paper plane", "staying safe in the sun",
    "building a birdhouse", "learning the piano", "writing a speech", "hosting a dinner party",
    "choosing a houseplant", "cleaning windows", "making a smoothie", "sleeping on a plane",
    "the solar system", "the rain in spring", "autumn leaves", "the first airplanes", "lighthouses",
    "glaciers", "owls", "dolphins", "butterflies", "ants", "sharks", "horses", "rabbits", "whales",
    "the Vikings", "the Renaissance", "the steam engine", "the telephone", "the bicycle race",
    "the history of chocolate", "the history of pizza", "sourdough bread", "rice", "potatoes",
    "apples", "bananas", "cheese", "olive oil", "spices", "salt", "sugar", "water filters",
    "batteries", "light bulbs", "microwaves", "refrigerators", "washing machines", "3D printers",
    "robots", "satellites", "telescopes", "microscopes", "weather forecasts", "fog", "hail",
    "hurricanes", "tornadoes", "tsunamis", "caves", "islands", "lakes", "waterfalls", "forests",
    "grasslands", "the Arctic", "Antarctica", "the Amazon river", "the Sahara", "the Alps",
    "city parks", "public transport", "traffic lights", "bridges", "skyscrapers", "tunnels",
    "post offices", "hospitals", "fire stations", "schools", "universities", "farmers markets",
    "supermarkets", "restaurants", "hotels", "airports", "train stations", "harbours",
    "teamwork", "kindness", "patience", "curiosity", "honesty", "habits", "goals", "motivation",
    "stress", "boredom", "happiness", "gratitude", "creativity", "leadership", "negotiation",
    "listening skills", "giving feedback", "saying no politely", "working from home",
    "video calls", "group projects", "deadlines", "volunteering", "recycling glass", "plastic bags",
    "reusable bottles", "carpooling", "tree planting", "clean air", "noise", "light pollution",
    "board games", "card games", "puzzles", "crosswords", "magic tricks", "origami", "knitting",
    "pottery", "dancing", "singing", "the violin", "drums", "orchestras", "movies", "cartoons",
    "comic books", "podcasts", "radio", "newspapers", "poetry readings", "theatre", "circuses",
    "tennis", "basketball", "swimming", "cycling", "skiing", "surfing", "yoga", "rock climbing",
    "marathons", "stretching", "posture", "eye health", "healthy snacks", "breakfast cereal",
    "soup", "salads", "sandwiches", "tacos", "noodles", "curry", "ice cream", "birthday cakes",
)
MORE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "howto": ("How do I get started with {t}?", "What are the steps for {t}?", "Give me simple instructions for {t}.",
              "What do I need before {t}?"),
    "explain": ("Tell me about {t}.", "Why do people care about {t}?", "Describe {t} in three sentences.",
                "What is the history of {t}, briefly?"),
    "list": ("List three things everyone should know about {t}.", "Give me two fun facts about {t}.",
             "What are three questions a child might ask about {t}?"),
    "write": ("Write a short diary entry about {t}.", "Write a short note to a neighbour about {t}.",
              "Write two sentences that could start an article about {t}."),
    "advice": ("My friend is nervous about {t}. What should I tell them?", "What is one good habit related to {t}?"),
}
CHARACTERS = ("a baker", "a young astronaut", "a retired teacher", "a curious cat", "a robot", "a farmer",
              "a shy student", "a detective", "a grandmother", "a street musician", "a ship's cook", "a librarian")
EVENTS = ("loses a key", "finds a map", "meets a stranger on a train", "wins a small prize", "gets lost in a city",
          "learns a new skill", "makes a mistake and fixes it", "plants a garden", "hears a strange noise at night",
          "receives a letter from the past", "helps a lost dog", "misses the last bus")
ITEMS = (("apples", "a market", 4, 2), ("notebooks", "a stationery shop", 2, 3), ("stickers", "a toy shop", 10, 1),
         ("oranges", "a grocer", 6, 3), ("erasers", "a school shop", 5, 2), ("candles", "a gift shop", 3, 4),
         ("bread rolls", "a bakery", 6, 2), ("tennis balls", "a sports shop", 3, 5))
SENTENCES = ("Where is the train station?", "The weather is nice today.", "My brother likes to read books.",
             "Can you help me, please?", "We are going to the beach tomorrow.", "I have two cats and a dog.",
             "The museum opens at nine o'clock.", "Thank you for the lovely dinner.", "I am learning to cook.",
             "How much does this cost?", "The children are playing in the park.", "I will call you tonight.")
LANGUAGES = ("French", "German", "Spanish", "Italian", "Portuguese")
DISHES = ("tomato soup", "a vegetable omelette", "banana bread", "a fruit salad", "fried rice", "lemonade",
          "pasta with garlic and olive oil", "oatmeal with berries", "a bean salad", "roasted potatoes")
EVENTS_TO_PLAN = ("a birthday party for a seven-year-old", "a weekend camping trip", "a study schedule for a week",
                  "a small garden", "a family movie night", "a day trip to a museum", "a charity bake sale",
                  "a morning routine", "a house move", "a neighbourhood clean-up")
CHOICES = (("learning", "a musical instrument", "a new language"), ("a first pet", "a cat", "a dog"),
           ("exercise", "running", "swimming"), ("travel", "the train", "the plane"),
           ("reading", "paper books", "e-books"), ("a holiday", "the mountains", "the seaside"),
           ("breakfast", "porridge", "toast"), ("notes", "a laptop", "a notebook"))


def build_more(seed: int = 0) -> list[Instruction]:
    """The wider training set: `MORE_TEMPLATES` x `MORE_TOPICS`, plus generated word problems,
    translations, stories, recipes, plans and choices, all train, in a seeded order."""
    rng = random.Random(seed + 1)
    out: list[Instruction] = []
    for category, templates in MORE_TEMPLATES.items():
        for ti, template in enumerate(templates):
            for topic_i, topic in enumerate(MORE_TOPICS):
                out.append(Instruction(f"more-{category}-{ti}-{topic_i}", category, "train",
                                       template.format(t=topic)))
    for ci, who in enumerate(CHARACTERS):
        for ei, what in enumerate(EVENTS):
            out.append(Instruction(f"more-story-{ci}-{ei}", "story", "train",
                                   f"Write a short story about {who} who {what}."))
    for ii, (item, shop, per, price) in enumerate(ITEMS):
        for n in range(2, 7):
            count = per * n
            out.append(Instruction(f"more-arithmetic-{ii}-{n}", "arithmetic", "train",
                                   f"{shop[0].upper() + shop[1:]} sells {item} at {per} for ${price}. How much do "
                                   f"{count} {item} cost? Show your steps."))
    for si, sentence in enumerate(SENTENCES):
        for language in LANGUAGES:
            out.append(Instruction(f"more-translate-{si}-{language}", "translation", "train",
                                   f"Translate this sentence into {language}: {sentence}"))
    for di, dish in enumerate(DISHES):
        out.append(Instruction(f"more-recipe-{di}", "recipe", "train", f"Give me a simple recipe for {dish}."))
    for pi, plan in enumerate(EVENTS_TO_PLAN):
        out.append(Instruction(f"more-plan-{pi}", "plan", "train", f"Help me plan {plan}."))
    for hi, (purpose, a, b) in enumerate(CHOICES):
        out.append(Instruction(f"more-choice-{hi}", "choice", "train",
                               f"Which is better for {purpose}: {a} or {b}? Give reasons."))
    rng.shuffle(out)
    return out


# A third training set (`build_cross`): each set's templates over the other set's topics, the pairs
# neither set asked. Train only: held-out categories and topics stay out, as in `build`.
def build_cross(seed: int = 0) -> list[Instruction]:
    """`TEMPLATES` (trained categories) x `MORE_TOPICS`, and `MORE_TEMPLATES` x the trained
    `TOPICS`, all train, in a seeded order."""
    rng = random.Random(seed + 2)
    out: list[Instruction] = []
    for category, templates in TEMPLATES.items():
        if category in HELDOUT_CATEGORIES:
            continue
        for ti, template in enumerate(templates):
            for topic_i, topic in enumerate(MORE_TOPICS):
                out.append(Instruction(f"cross-{category}-{ti}-m{topic_i}", category, "train",
                                       template.format(t=topic)))
    for category, templates in MORE_TEMPLATES.items():
        for ti, template in enumerate(templates):
            for topic_i, topic in enumerate(TOPICS):
                if topic not in HELDOUT_TOPICS:
                    out.append(Instruction(f"cross-more-{category}-{ti}-{topic_i}", category, "train",
                                           template.format(t=topic)))
    rng.shuffle(out)
    return out


SETS = {"base": build, "more": build_more, "cross": build_cross}


if __name__ == "__main__":
    items = build()
    by = {}
    for it in items:
        by.setdefault((it.split, it.category), 0)
        by[(it.split, it.category)] += 1
    for key in sorted(by):
        print(key, by[key])
    print(len(items), "instructions", file=sys.stderr)
