"""Benchmark: caption language ID throughput on one core (target: >= 50,000 captions/s).

Captions are synthetic alt-text: a mix of languages (60% English, as in web crawls), 2-30 words,
some with newlines and product codes, 92% distinct (so that skipping repeats, which
:func:`~mmdata.curate.language.detect_languages` does within a batch, gains little here). The model
(lid.176.ftz) is loaded before timing; the time covers ``detect_languages`` over batches of a
shard's size, Arrow input to Arrow output, and is counted in CPU seconds of this one-threaded process
(captions per core, whatever else the machine runs). ``--stage`` also times ``mmdata annotate
--language`` end to end (inline executor, one process: metadata read, prediction, part and table
writes) on a generated dataset.

    python bench/annotate.py                 # 200k captions
    python bench/annotate.py --stage         # and the stage on 100k rows
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)

TARGET = 50_000  # captions/s per core

PHRASES = {
    "en": ["a photo of", "red dress with floral print", "the view from the top of the mountain", "wooden table",
           "in the kitchen", "for sale", "free shipping", "close-up of a cat sleeping", "on a sunny day",
           "vintage poster", "men's running shoes", "logo design", "wedding cake with roses"],
    "de": ["ein Foto von", "rotes Kleid mit Blumenmuster", "Blick vom Gipfel des Berges", "Holztisch",
           "in der Küche", "zu verkaufen", "kostenloser Versand", "Nahaufnahme einer schlafenden Katze"],
    "fr": ["une photo de", "robe rouge à fleurs", "la vue depuis le sommet de la montagne", "table en bois",
           "dans la cuisine", "à vendre", "livraison gratuite", "gros plan d'un chat qui dort"],
    "es": ["una foto de", "vestido rojo con estampado floral", "la vista desde la cima de la montaña",
           "mesa de madera", "en la cocina", "en venta", "envío gratis", "primer plano de un gato durmiendo"],
    "ru": ["фотография", "красное платье с цветочным принтом", "вид с вершины горы", "деревянный стол",
           "на кухне", "продается", "бесплатная доставка", "крупный план спящей кошки"],
    "ja": ["の写真", "花柄の赤いドレス", "山頂からの眺め", "木製テーブル", "キッチンで", "送料無料",
           "眠っている猫のクローズアップ"],
    "zh": ["的照片", "红色印花连衣裙", "山顶的风景", "木桌", "在厨房里", "包邮", "睡觉的猫特写"],
}
SHARES = {"en": 0.6, "de": 0.08, "fr": 0.08, "es": 0.08, "ru": 0.06, "ja": 0.05, "zh": 0.05}


def captions(count: int, seed: int = 0) -> list[str]:
    """Alt-text-like captions, nearly all distinct (as on the web, where repeats are a minority): one
    to three phrases of a language plus one to six more of its words in random order."""
    rng = np.random.default_rng(seed)
    languages = rng.choice(list(SHARES), size=count, p=list(SHARES.values()))
    vocabulary = {language: " ".join(phrases).split() for language, phrases in PHRASES.items()}
    made = []
    for language in languages:
        phrases, words = PHRASES[language], vocabulary[language]
        parts = [phrases[i] for i in rng.integers(0, len(phrases), int(rng.integers(1, 4)))]
        parts += [words[i] for i in rng.integers(0, len(words), int(rng.integers(1, 7)))]
        if rng.random() < 0.1:
            parts.append(f"SKU-{int(rng.integers(10_000, 99_999))}")
        separator = "\n" if rng.random() < 0.03 else " "
        made.append(separator.join(parts))
    return made


def bench_model(count: int, batch: int) -> tuple[float, float]:
    """(captions per CPU second of this process, captions per wall second)."""
    from mmdata.curate.language import detect_languages, language_model

    texts = pa.array(captions(count), pa.string())
    distinct = len(pa.compute.unique(texts)) / count
    words = pa.compute.mean(pa.compute.list_value_length(pa.compute.utf8_split_whitespace(texts))).as_py()
    print(f"{count:,} captions: {distinct:.1%} distinct, {words:.1f} words on average")
    language_model()  # loading is not what is measured
    detect_languages(texts.slice(0, 1000))
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, count, batch):
        detect_languages(texts.slice(start, batch))
    return count / (time.process_time() - cpu), count / (time.perf_counter() - wall)


def bench_stage(rows: int, shard_size: int) -> tuple[float, float]:
    import io

    from PIL import Image

    from mmdata import layout
    from mmdata.curate.annotate import annotate
    from mmdata.shard_output import shard_output

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 40, 200)).save(buffer, format="JPEG")
    picture = buffer.getvalue()
    texts = captions(rows, seed=1)
    with tempfile.TemporaryDirectory(prefix="mmdata-bench-annotate-") as root:
        for shard, start in enumerate(range(0, rows, shard_size)):
            with shard_output(root, shard) as out:
                for row, text in enumerate(texts[start : start + shard_size]):
                    key = layout.sample_key(shard, row, shard_size)
                    out.add({"key": key, "uid": key, "caption": text, "status": "success", "width": 8, "height": 8},
                            {"jpg": picture})
                out.commit()
        cpu, wall = time.process_time(), time.perf_counter()
        annotate(root, image_quality=False, executor="inline")
        return rows / (time.process_time() - cpu), rows / (time.perf_counter() - wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000, help="captions per call (a shard's rows)")
    parser.add_argument("--stage", action="store_true", help="also time `mmdata annotate --language` end to end")
    parser.add_argument("--stage-rows", type=int, default=100_000)
    arguments = parser.parse_args()
    # per core = per CPU second of this one-threaded process, which other load on the machine does not
    # dilute; the wall-clock rate is shown beside it
    print(f"cpu: {os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f}; one process, one thread")
    per_core, wall = bench_model(arguments.captions, arguments.batch)
    print(f"language ID: {per_core:,.0f} captions/s per core ({per_core / TARGET:.2f}x the {TARGET:,}/s target); "
          f"wall clock {wall:,.0f}/s")
    if arguments.stage:
        per_core, wall = bench_stage(arguments.stage_rows, arguments.batch)
        print(f"annotate --language stage (inline, I/O included): {per_core:,.0f} rows/s per core "
              f"({per_core / TARGET:.2f}x the target); wall clock {wall:,.0f}/s")


if __name__ == "__main__":
    main()
