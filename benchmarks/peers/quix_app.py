"""Peer: the matching job in Quix Streams, written the idiomatic way.

Three input topics are concatenated into one StreamingDataFrame; a stateful
apply (RocksDB state with changelog, keyed by the record key = orderNo)
remembers which document types arrived, and a complete order is emitted as one
decision to the output topic.
"""
from __future__ import annotations

import sys
import time

from quixstreams import Application


def run(bootstrap: str, topics: list[str], out: str, expected: int, state_dir: str) -> float:
    app = Application(broker_address=bootstrap, consumer_group="peer-quix", auto_offset_reset="earliest",
                      state_dir=state_dir, auto_create_topics=True)
    inputs = [app.topic(t, value_deserializer="json", key_deserializer="str") for t in topics]
    output = app.topic(out, value_serializer="json", key_serializer="str")
    frames = [app.dataframe(t) for t in inputs]
    sdf = frames[0].concat(frames[1]).concat(frames[2]) if len(frames) == 3 else frames[0]
    done = {"n": 0, "start": 0.0}

    def match(value: dict, state) -> dict | None:  # type: ignore[no-untyped-def]
        done["start"] = done["start"] or time.time()  # from the first record: startup is not the job
        kind = next(iter(value))
        seen = state.get("seen", [])
        if kind not in seen:
            seen = seen + [kind]
            state.set("seen", seen)
        if len(seen) == len(topics):
            state.delete("seen")
            done["n"] += 1
            if done["n"] >= expected:
                app.stop()
            return {"orderNo": value[kind]["orderNo"], "status": 800}
        return None

    sdf = sdf.apply(match, stateful=True).filter(lambda v: v is not None)
    sdf.to_topic(output)
    app.run()
    return time.time() - done["start"]


if __name__ == "__main__":
    bootstrap, out, expected, state_dir, *topics = sys.argv[1:]
    print(run(bootstrap, topics, out, int(expected), state_dir))
