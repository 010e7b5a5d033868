"""Write the paper smoke's small data files, in the formats of the hub datasets they stand for.

    python tests/data/paper-smoke/generate.py      # rewrites the files beside this script

Deterministic (fixed seeds; the math rows come from mathematics_dataset through distill.data.math,
whose output depends only on its arguments). The text is generated, not copied from the datasets:
  slimpajama.jsonl    cerebras/SlimPajama-627B rows: {"text", "meta": {"redpajama_set_name"}},
                      ROWS_PER_DOMAIN of each of RedPajama's 7 sets, interleaved as in the hub files
  open_web_math.jsonl open-web-math/open-web-math rows: {"url", "text", "date", "metadata"}
                      (metadata a JSON string, as on the hub)
  wikisource_zh.jsonl wikimedia/wikisource 20231201.zh rows: {"id", "url", "title", "text"}
  c4_zh.jsonl         allenai/c4 multilingual/c4-zh rows: {"text", "timestamp", "url"}
  ultrachat.jsonl     HuggingFaceH4/ultrachat_200k rows: {"prompt", "prompt_id", "messages"},
                      multi-turn user/assistant conversations
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS_PER_DOMAIN = 40
CHAT_ROWS = 80

TOPICS = ["the ocean", "volcanoes", "bicycles", "coffee", "the moon", "honeybees", "chess",
          "rainforests", "photography", "gardening", "electric cars", "jazz", "origami", "sleep",
          "mountains", "libraries", "recycling", "trains", "baking bread", "dinosaurs", "winter",
          "robots", "maps", "birds", "clouds", "painting", "rivers", "glaciers",
          "bridges"]  # fmt: skip
NAMES = ["Ada", "Bruno", "Chen", "Dalia", "Emeka", "Freya", "Goran", "Hana", "Ivo", "Jun", "Kofi",
         "Lena", "Mateo", "Nora", "Omar", "Priya", "Rosa", "Sven", "Tariq", "Uma"]  # fmt: skip
PLACES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tromsø", "Hobart", "Valparaíso", "Krakow",
          "Accra", "Tbilisi", "Winnipeg", "Porto Alegre"]  # fmt: skip


def web(rng: random.Random) -> str:
    topic, place = rng.choice(TOPICS), rng.choice(PLACES)
    return (
        f"{topic.title()} in {place} | Local Guide\nPosted on {rng.randint(1, 28)} "
        f"{rng.choice(['March', 'July', 'October'])} {rng.randint(2009, 2023)} by "
        f"{rng.choice(NAMES)}\nLooking for the best places to enjoy {topic} around {place}? "
        f"We visited {rng.randint(3, 12)} spots this season. Opening hours vary, so call ahead. "
        f"Share this post | Leave a comment | {rng.randint(2, 90)} comments"
    )


def c4(rng: random.Random) -> str:
    topic = rng.choice(TOPICS)
    return (
        f"Many people ask us how to get started with {topic}. The short answer is to begin small "
        f"and stay curious. Our team has helped more than {rng.randint(100, 9000)} customers "
        f"since {rng.randint(1990, 2015)}, and the most common advice we give is to set aside "
        f"{rng.randint(10, 60)} minutes a day. Contact us today to learn more about {topic}."
    )


def github(rng: random.Random) -> str:
    name = rng.choice(["total", "mean", "clip", "scale", "count", "merge"])
    n = rng.randint(2, 9)
    return (
        f'"""Utilities for {name} operations."""\n\nimport math\n\n\n'
        f"def {name}_values(values, factor={n}):\n"
        f'    """Return the {name} of `values`, scaled by `factor`."""\n'
        f"    if not values:\n        return 0\n"
        f"    result = sum(v * factor for v in values) / len(values)\n"
        f"    return math.floor(result * {10**n}) / {10**n}\n\n\n"
        f"class {name.title()}Counter:\n    def __init__(self):\n        self.seen = {{}}\n\n"
        f"    def add(self, key):\n        self.seen[key] = self.seen.get(key, 0) + 1\n"
    )


def wikipedia(rng: random.Random) -> str:
    name, place = rng.choice(NAMES), rng.choice(PLACES)
    year = rng.randint(1820, 1990)
    return (
        f"{name} {rng.choice(['Alves', 'Berg', 'Okafor', 'Ito', 'Novak'])} (born {year}) was a "
        f"{rng.choice(['botanist', 'engineer', 'composer', 'cartographer'])} from {place}. "
        f"{rng.choice(['She', 'He'])} is best known for work on {rng.choice(TOPICS)}, published "
        f"in {year + rng.randint(20, 40)}.\n\n== Early life ==\nBorn in {place}, "
        f"{name} studied at the local university and later moved to {rng.choice(PLACES)}."
    )


def book(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    return (
        f"CHAPTER {rng.choice(['I', 'II', 'IV', 'VII', 'XII'])}\n\nThe rain had not stopped for "
        f"three days when {a} finally opened the letter. It was short, written in a hand {a} "
        f'had not seen since the winter at {rng.choice(PLACES)}. "Come at once," it said, '
        f"and nothing more. {b} watched from the doorway, saying nothing, as the fire burned "
        f"low and the clock in the hall struck {rng.choice(['nine', 'ten', 'eleven'])}."
    )


def arxiv(rng: random.Random) -> str:
    k = rng.randint(2, 8)
    return (
        f"\\begin{{abstract}}\nWe study the convergence of stochastic gradient methods for "
        f"{rng.choice(['sparse', 'low-rank', 'convex', 'smooth'])} objectives. We show that "
        f"after $T$ steps the error is $O(T^{{-1/{k}}})$, improving the known bound of "
        f"$O(T^{{-1/{k + 1}}})$.\n\\end{{abstract}}\n\\section{{Introduction}}\nLet $f:"
        f"\\mathbb{{R}}^d \\to \\mathbb{{R}}$ be $L$-smooth with $L = {rng.randint(1, 9)}$."
    )


def stackexchange(rng: random.Random) -> str:
    tool = rng.choice(["git", "bash", "pandas", "LaTeX", "SQL", "numpy"])
    return (
        f"Q: How do I remove duplicate rows in {tool} without changing their order?\n\n"
        f"I tried sorting first, but that loses the original order of my {rng.randint(3, 900)} "
        f"rows.\n\nA: Keep the first occurrence of each key and skip the rest; in {tool} this is "
        f"a one-liner once you know the option. It runs in linear time. (score: "
        f"{rng.randint(1, 300)})"
    )


REDPAJAMA = {"RedPajamaCommonCrawl": web, "RedPajamaC4": c4, "RedPajamaGithub": github,
             "RedPajamaWikipedia": wikipedia, "RedPajamaBook": book, "RedPajamaArXiv": arxiv,
             "RedPajamaStackExchange": stackexchange}  # fmt: skip

ZH_SUBJECTS = ["我们", "这座城市", "老师", "科学家", "小明", "这本书", "那条河", "工程师", "农民"]
ZH_VERBS = ["研究了", "记录了", "描述了", "改变了", "发现了", "讨论了", "保护了"]
ZH_OBJECTS = ["山中的古老寺庙", "春天的天气", "新的交通方式", "传统的节日", "海边的小镇",
              "数学的历史", "诗人的生活", "城市的发展"]  # fmt: skip


def zh_sentence(rng: random.Random) -> str:
    return f"{rng.choice(ZH_SUBJECTS)}{rng.choice(ZH_VERBS)}{rng.choice(ZH_OBJECTS)}。"


def math_rows() -> list[dict]:
    from distill.data.math import generate

    modules = ["algebra__linear_1d", "arithmetic__add_or_sub", "numbers__gcd"]
    return generate(modules, "train-easy", {"test": ROWS_PER_DOMAIN}, seed=0)["test"]


def chat(rng: random.Random, i: int) -> dict:
    topic = rng.choice(TOPICS)
    first = rng.choice([
        f"Give me three tips for getting started with {topic}.",
        f"Explain {topic} to a ten-year-old.",
        f"Why does {topic} matter?",
    ])  # fmt: skip
    turns = [first, f"Can you say more about the second point about {topic}?",
             "Thanks! Could you sum that up in one sentence?"]  # fmt: skip
    answers = [
        f"Sure. First, read a short introduction to {topic}. Second, find a local group of "
        f"people who enjoy it. Third, keep a notebook of what you learn each week.",
        f"Groups around {topic} are a good way to learn from people with more experience; many "
        f"meet every {rng.choice(['week', 'month'])} and welcome beginners.",
        f"Start small, learn with others and write down what you find about {topic}.",
    ]
    n_turns = rng.choice([2, 2, 3]) if i % 4 else 1  # mostly multi-turn, as UltraChat is
    messages = []
    for question, answer in zip(turns[:n_turns], answers[:n_turns], strict=True):
        messages += [
            {"content": question, "role": "user"},
            {"content": answer, "role": "assistant"},
        ]
    prompt_id = hashlib.sha256(first.encode()).hexdigest()
    return {"prompt": first, "prompt_id": prompt_id, "messages": messages}


def write(name: str, rows: list[dict]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(0)
    slimpajama = [
        {"text": make(rng), "meta": {"redpajama_set_name": label}}
        for _ in range(ROWS_PER_DOMAIN)
        for label, make in REDPAJAMA.items()
    ]
    rng.shuffle(slimpajama)
    write("slimpajama.jsonl", slimpajama)
    owm = []
    for i, row in enumerate(math_rows()):
        question, answer = row["messages"][0]["content"], row["answer"]
        text = (f"# Exercise {i + 1}\n\n{question}\n\n**Solution.** Working step by step, we "
                f"isolate the unknown and simplify; the result is ${answer}$.\n\nThe answer is "
                f"{answer}.")  # fmt: skip
        meta = json.dumps({"extraction_info": {"found_math": True}, "score": 0.9})
        owm.append({"url": f"https://math.example.org/exercise/{i}", "text": text,
                    "date": "2023-06-01T00:00:00Z", "metadata": meta})  # fmt: skip
    write("open_web_math.jsonl", owm)
    write("wikisource_zh.jsonl", [
        {"id": str(1000 + i), "url": f"https://zh.wikisource.org/wiki/{i}", "title": f"卷{i + 1}",
         "text": "".join(zh_sentence(rng) for _ in range(6))}
        for i in range(ROWS_PER_DOMAIN)
    ])  # fmt: skip
    write("c4_zh.jsonl", [
        {"text": "".join(zh_sentence(rng) for _ in range(8)),
         "timestamp": f"2020-04-0{1 + i % 9}T12:00:00Z", "url": f"https://news.example.cn/{i}"}
        for i in range(ROWS_PER_DOMAIN)
    ])  # fmt: skip
    write("ultrachat.jsonl", [chat(rng, i) for i in range(CHAT_ROWS)])


if __name__ == "__main__":
    main()
