"""The anchor set: ``anchors.json`` plus one standard PEFT adapter directory per endpoint.

Endpoint order is meaningful: the first endpoint of an attribute is level 0 ("negative"), the
second is level 1 ("positive"). Adapters are listed in that order, attribute by attribute, which is
the order of ``Mix.coefficients``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LerpError
from .files import atomic_file
from .models import ModelRef, embedded_default, weights_hash

MANIFEST = "anchors.json"
FORMAT = "lerplm.anchors/1"


@dataclass
class Endpoint:
    name: str
    adapter: str  # directory relative to the anchor set
    data: list[dict] = field(default_factory=list)  # [{"path", "sha256", "texts"}]
    train_loss: float | None = None


@dataclass
class Attribute:
    name: str
    negative: Endpoint
    positive: Endpoint

    @property
    def endpoints(self) -> tuple[Endpoint, Endpoint]:
        return (self.negative, self.positive)


@dataclass
class AnchorSet:
    root: Path
    base_model: ModelRef
    attributes: list[Attribute]
    base_sha256: str | None = None
    embedded: bool = False
    training: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    @property
    def endpoints(self) -> list[Endpoint]:
        return [e for a in self.attributes for e in a.endpoints]

    def adapter_dirs(self) -> list[Path]:
        return [self.root / e.adapter for e in self.endpoints]

    def attribute(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise LerpError(f"unknown attribute {name!r}; choose from: {', '.join(self.names)}")

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "base_model": {
                **self.base_model.to_json(),
                "embedded": self.embedded,
                "sha256": self.base_sha256,
            },
            "attributes": [
                {
                    "name": a.name,
                    "endpoints": [
                        {"name": e.name, "adapter": e.adapter, "data": e.data, "train_loss": e.train_loss}
                        for e in a.endpoints
                    ],
                }
                for a in self.attributes
            ],
            "training": self.training,
        }

    def save(self) -> None:
        """Write the manifest atomically (temp file + rename)."""
        with atomic_file(self.root / MANIFEST) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, root: str | Path) -> AnchorSet:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise LerpError(f"no anchor set at {root}: {MANIFEST} not found (train one with 'lerplm train')")
        try:
            d = json.loads(path.read_text())
            bm = d["base_model"]
            embedded = bool(bm.get("embedded"))
            base = embedded_default() if embedded else ModelRef.from_json(bm)
            attrs = []
            for a in d["attributes"]:
                eps = [
                    Endpoint(e["name"], e["adapter"], e.get("data", []), e.get("train_loss")) for e in a["endpoints"]
                ]
                if len(eps) != 2:
                    raise LerpError(f"attribute {a['name']!r} in {path} must have exactly two endpoints")
                attrs.append(Attribute(a["name"], eps[0], eps[1]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise LerpError(f"{path} is not a valid anchor manifest ({type(e).__name__}: {e})") from None
        if not attrs:
            raise LerpError(f"{path} lists no attributes")
        names = [a.name for a in attrs]
        if len(set(names)) != len(names):
            raise LerpError(f"{path} names an attribute twice")
        s = cls(root, base, attrs, bm.get("sha256"), embedded, d.get("training", {}))
        for adapter in s.adapter_dirs():
            if not (adapter / "adapter_config.json").is_file():
                raise LerpError(f"adapter directory {adapter} has no adapter_config.json")
        return s

    def check_base(self) -> str | None:
        """A warning if the local base weights changed since the anchors were trained, else None."""
        if not self.base_sha256:
            return None
        now = weights_hash(self.base_model)
        if now and now != self.base_sha256:
            return f"base model weights differ from the ones the anchors were trained on ({self.base_model.describe()})"
        return None

    def describe(self) -> str:
        lines = [
            f"anchor set  {self.root}",
            f"base model  {'embedded default: ' if self.embedded else ''}{self.base_model.describe()}",
        ]
        if self.base_sha256:
            lines.append(f"base sha256 {self.base_sha256[:16]}…")
        for a in self.attributes:
            lines.append(f"attribute   {a.name}: level 0 = {a.negative.name!r}, level 1 = {a.positive.name!r}")
            for e in a.endpoints:
                loss = f"loss {e.train_loss:.3f}" if e.train_loss is not None else "loss n/a"
                n = sum(x.get("texts", 0) for x in e.data)
                files = ", ".join(Path(x["path"]).name for x in e.data) or "n/a"
                lines.append(f"  {e.name:<14} {e.adapter:<28} {loss}  data {files} ({n} texts)")
        t = self.training
        if t:
            lines.append("training    " + ", ".join(f"{k}={v}" for k, v in t.items() if not isinstance(v, dict)))
            for key, table in t.items():  # nested settings (lora, replay, distill) on their own lines
                if isinstance(table, dict) and key not in ("attributes", "endpoints"):
                    head = "lora        " if key == "lora" else f"training    {key}: "
                    lines.append(head + ", ".join(f"{k}={v}" for k, v in table.items()))
            for name, changes in {**(t.get("attributes") or {}), **(t.get("endpoints") or {})}.items():
                lines.append(f"training    {name} only: " + ", ".join(f"{k}={v}" for k, v in changes.items()))
        return "\n".join(lines)
