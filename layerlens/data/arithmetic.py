"""The embedded instruction set: arithmetic word problems with exact answers, written by this module from a fixed
seed (no outside data), so it may be redistributed with the package. `python -m layerlens.data.arithmetic <folder>`
writes the files that ship in layerlens/data/instructions/arithmetic/ (tests/test_sft.py checks they are its output).
"""

import json
import random
import sys
from pathlib import Path

SEED, TRAIN_ROWS, TEST_ROWS = 20261207, 2500, 500
NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivan", "Jo", "Kemal", "Lea", "Mo", "Nia")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cards", "books", "shells", "coins", "stamps", "cookies")
INSTRUCTION = "Answer with the number only."


def problem(rng: random.Random) -> tuple[str, int]:
    """One word problem and its answer (a non-negative integer)."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 30)
    kind = rng.randrange(8)
    if kind == 0:
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
    if kind == 1:
        a, b = max(a, b) + c, min(a, b)
        return f"{name} had {a} {item} and gave {b} to {other}. How many {item} does {name} have left?", a - b
    if kind == 2:
        a, b = a % 12 + 2, b % 12 + 2
        return f"A box holds {a} {item}. How many {item} are in {b} boxes?", a * b
    if kind == 3:
        a, b = a % 12 + 2, b % 9 + 2
        return f"{name} shares {a * b} {item} equally among {b} friends. How many {item} does each friend get?", a
    if kind == 4:
        a, b = a % 20 + 5, b % 7 + 2
        return (
            f"{name} reads {a} pages a day for {b} days, then {c} more pages. How many pages does {name} read in all?",
            a * b + c,
        )
    if kind == 5:
        start = a + b + c
        return (
            f"A shop had {start} {item}. It sold {a} in the morning and {b} in the afternoon. "
            f"How many {item} are left?",
            c,
        )
    if kind == 6:
        a, b = a % 15 + 2, b % 10 + 2
        return f"{name} saves {a} dollars each week. How many dollars has {name} saved after {b} weeks?", a * b
    price, count = a % 9 + 1, b % 5 + 1
    note = next(n for n in (10, 20, 50, 100) if n >= price * count)
    return (
        f"Each ticket costs {price} dollars. {name} buys {count} tickets with a {note}-dollar note. "
        f"How many dollars of change does {name} get?",
        note - price * count,
    )


def rows(count: int, seed: int = SEED) -> list[dict[str, str]]:
    """`count` distinct problems as prompt/completion rows."""
    rng, seen = random.Random(seed), set()
    out: list[dict[str, str]] = []
    while len(out) < count:
        text, answer = problem(rng)
        if text not in seen:
            seen.add(text)
            out.append({"prompt": f"{text} {INSTRUCTION}", "completion": str(answer)})
    return out


def write(folder: Path) -> None:
    """train.jsonl and test.jsonl: distinct problems, none in both."""
    folder.mkdir(parents=True, exist_ok=True)
    made = rows(TRAIN_ROWS + TEST_ROWS)
    for split, part in (("train", made[:TRAIN_ROWS]), ("test", made[TRAIN_ROWS:])):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in part)


if __name__ == "__main__":
    write(Path(sys.argv[1]))
