"""Optional TFDS path: problems as a TFDS dataset built from a local manual dir, written as
array_record and read with `as_data_source` (random access, no TensorFlow needed; `tfds.load`
would need TensorFlow). The manual dir holds `<split>.jsonl` files of serialised Problems."""
from __future__ import annotations

import dataclasses
import json
import os

from .records import DataError, Problem


def to_json(p: Problem) -> str:
    return json.dumps(dataclasses.asdict(p))


def from_json(s: str | bytes) -> Problem:
    d = json.loads(s)
    if d.get("stdio") is not None:
        d["stdio"] = [tuple(x) for x in d["stdio"]]
    return Problem(**d)


def write_manual_dir(problems_by_split: dict[str, list[Problem]], manual_dir: str) -> str:
    os.makedirs(manual_dir, exist_ok=True)
    for split, problems in problems_by_split.items():
        with open(os.path.join(manual_dir, f"{split}.jsonl"), "w") as f:
            for p in problems:
                f.write(to_json(p) + "\n")
    return manual_dir


def build(manual_dir: str, data_dir: str, name: str = "repirl_problems"):
    """Prepares the dataset (array_record) once and returns its builder."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError("the TFDS path needs tensorflow-datasets and array-record: pip install 'repirl_jax[data]'") \
            from None
    splits = sorted(f[:-6] for f in os.listdir(manual_dir) if f.endswith(".jsonl")) if os.path.isdir(manual_dir) else []
    if not splits:
        raise DataError(f"{manual_dir}: no <split>.jsonl files")

    class Builder(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        MANUAL_DOWNLOAD_INSTRUCTIONS = "Write <split>.jsonl files of serialised Problems into the manual dir."

        def _info(self):
            return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({"record": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(os.path.join(dl_manager.manual_dir, f"{s}.jsonl")) for s in splits}

        def _generate_examples(self, path):
            with open(path) as f:
                for n, line in enumerate(f):
                    if line.strip():
                        yield n, {"record": line.strip()}

    Builder.name = name
    builder = Builder(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def problems(builder, split: str) -> list[Problem]:
    source = builder.as_data_source(split=split)
    return [from_json(source[i]["record"]) for i in range(len(source))]
