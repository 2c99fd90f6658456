"""The Quick start's main job: start deadline.py on the default model, query it, stop it.

Run: python -m servelab.demo   (or: make demo)
"""

from __future__ import annotations

import argparse
import math

import httpx

from servelab.process import ServerProcess

SENTENCES = [
    "the weather is nice today",
    "it is sunny and warm outside",
    "the stock market fell sharply this morning",
]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="deadline", help="which server_variants/ file to start")
    args = parser.parse_args(argv)
    print(f"starting server_variants/{args.variant}.py on the packaged all-MiniLM-L6-v2 (offline)...")
    with ServerProcess(args.variant) as server:
        print(f"serving at {server.url}; as curl: curl -X POST -d \"{SENTENCES[0]}\" {server.url}/\n")
        info = httpx.get(server.url + "/info").json()
        print(f"model {info['model']['id']} ({info['model']['task']}, {info['model']['device']}), "
              f"settings: max_wait_ms={info['settings']['max_wait_ms']}")
        embeddings = []
        for text in SENTENCES:
            reply = httpx.post(server.url + "/", content=text.encode(), timeout=30)
            reply.raise_for_status()
            vector = reply.json()
            embeddings.append(vector)
            head = f"[{vector[0]:+.4f}, {vector[1]:+.4f}, ...]"
            print(f"POST {text!r:48} -> 200, {len(vector)} floats {head}")
        similar, unrelated = cosine(embeddings[0], embeddings[1]), cosine(embeddings[0], embeddings[2])
        print(f"\ncosine(sentence 1, sentence 2) = {similar:.3f}  (similar meaning)")
        print(f"cosine(sentence 1, sentence 3) = {unrelated:.3f}  (unrelated)")
        bad = httpx.post(server.url + "/", content=b"   ")
        print(f"\nPOST '   ' -> {bad.status_code} {bad.json()['error']}")
        again = httpx.post(server.url + "/", content=b"still serving?")
        print(f"POST 'still serving?' -> {again.status_code}: the model loop survived the bad request")
    print("server stopped.")


if __name__ == "__main__":
    main()
