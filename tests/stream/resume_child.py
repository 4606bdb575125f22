"""Run by test_stream_resume in a fresh process: for each saved loader state, print the rest of its epoch."""

import json
import sys

import mmdata


def rest_of_epoch(case: dict) -> list[str]:
    dataset = mmdata.stream(
        case["root"], seed=7, shuffle_buffer=4, decode=None, rank=case["rank"], world_size=case["world_size"]
    )
    loader = dataset.loader(
        batch_size=case["batch_size"], num_workers=case["num_workers"],
        collate_fn=lambda items: [i["key"] for i in items],
    )
    loader.load_state_dict(case["state"])
    loader.set_epoch(case["state"]["epoch"])  # a resumed training loop calls this; the same epoch keeps the progress
    return [key for batch in loader for key in batch]


if __name__ == "__main__":
    cases = json.loads(open(sys.argv[1]).read())
    rests = [rest_of_epoch(case) for case in cases]
    print(json.dumps({"rests": rests, "ray_imported": "ray" in sys.modules}))
