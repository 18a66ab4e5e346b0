"""The training config (``styles.toml``): base model, attributes with two endpoints, LoRA and
training settings. Validated with pydantic so a typo is an error that names the field."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import LerpError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataFile(_Strict):
    path: str
    column: str = "text"  # for jsonl / csv


def _plain_name(v: str) -> str:
    """Attribute and endpoint names name directories and mixes ("sentiment=0.9"): plain words only."""
    if not v or any(c in v for c in ",=/\\ ") or v.startswith("."):
        raise ValueError("names must be non-empty, with no ',', '=', '/', '\\' or spaces, not starting with '.'")
    return v


PlainName = Annotated[str, AfterValidator(_plain_name)]


class EndpointConfig(_Strict):
    name: PlainName
    files: list[str | DataFile] = Field(min_length=1)
    test_files: list[str | DataFile] | None = None  # default: each file with .train. -> .test., if present
    normalize: list[Literal["detokenize", "truecase"]] = []
    # changes to the attribute's training for this endpoint's anchor alone: the two anchors are separate adapters,
    # and one endpoint's corpus may need another recipe than its opposite's (checked as an attribute's changes)
    training: dict[str, Any] = {}

    def data_files(self) -> list[DataFile]:
        return [DataFile(path=f) if isinstance(f, str) else f for f in self.files]

    def held_out_files(self) -> list[DataFile]:
        if self.test_files is not None:
            return [DataFile(path=f) if isinstance(f, str) else f for f in self.test_files]
        return [
            f.model_copy(update={"path": f.path.replace(".train.", ".test.")})
            for f in self.data_files()
            if ".train." in f.path
        ]


class AttributeConfig(_Strict):
    name: PlainName
    negative: EndpointConfig  # level 0
    positive: EndpointConfig  # level 1
    # changes to [training] for this attribute's two anchors: attributes learn at different speeds
    # (e.g. training = { max_steps = 180 }); checked against TrainSettings by StylesConfig
    training: dict[str, Any] = {}

    @property
    def endpoints(self) -> tuple[EndpointConfig, EndpointConfig]:
        return (self.negative, self.positive)

    @model_validator(mode="after")
    def _two_endpoints(self) -> AttributeConfig:
        if self.negative.name == self.positive.name:
            raise ValueError(f"its two endpoints are both named {self.negative.name!r}; each anchor needs its own name")
        return self


class LoraSettings(_Strict):
    """Defaults follow the paper's code: r=32, lora_alpha=16, dropout 0.1, attention projections."""

    r: int = Field(32, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]

    def peft_config(self, **extra):
        """These settings as PEFT's LoraConfig of a causal LM: the one mapping training and saving share."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
            bias="none",
            **extra,
        )


class ReplaySettings(_Strict):
    """The base model's own answers to instructions, mixed into an anchor's training: the anchor learns the
    style from the corpus and keeps answering instructions as the base model does."""

    prompts: str  # a file of instructions, one per line, relative to data_dir
    first: int = Field(80, gt=0)  # its first N lines (the rest stay held out for evaluation)
    share: float = Field(0.5, gt=0, lt=1)  # share of the training blocks that are replayed answers
    tokens: int = Field(128, gt=0)  # new tokens per base answer (sampled at temperature 0.8, top-p 0.95)


class DistillSettings(_Strict):
    """Anchors trained on answers to instructions guided by a corpus-trained teacher anchor (lerplm.distill):
    the style of the corpus at the base model's answer length, answering the instruction."""

    prompts: str  # a file of instructions, one per line, relative to data_dir
    first: int = Field(240, gt=0)  # its first N lines (the rest stay held out for evaluation)
    tokens: int = Field(128, gt=0)  # new tokens per answer
    strength: float = Field(1.0, gt=0)  # the teacher's exponent in the product; above 1 strengthens its style


RECIPES = ("replay", "distill")  # the answer recipes; replay may join distill's answers


class TrainSettings(_Strict):
    epochs: float = Field(1.0, gt=0)
    block_size: int = Field(128, gt=8)
    batch_size: int = Field(8, gt=0)
    gradient_accumulation: int = Field(1, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    max_examples: int | None = Field(None, gt=0)  # texts per endpoint (random sample)
    max_steps: int | None = Field(None, gt=0)  # optimizer steps per anchor
    save_steps: int = Field(50, gt=0)  # checkpoint interval, for resuming inside an anchor
    logging_steps: int = Field(10, gt=0)
    seed: int = 0
    # "plain": texts end to end, as run_clm. "chat": each text is the assistant's answer to `chat_prompt`
    # in the model's chat template, as generation prompts it (loss on the answer only).
    text_format: Literal["plain", "chat"] = "plain"
    chat_prompt: str = Field("Write a short text.", min_length=1)
    # consecutive texts joined into one answer of at least this many words: anchors learn the answer length
    # they see, so one-line texts (most style corpora) teach one-line answers; None (or 0, which lets an
    # attribute undo the set's value) keeps one text per answer
    answer_words: int | None = Field(None, ge=0)
    # false: no loss on the token that ends an answer, so that where the corpus's answers end does not teach the
    # anchor where to end its own; "finished": that loss only on answers that ended on their own, none on replayed
    # or distilled answers cut at their token limit (true teaches those cuts as ends); a number between 0 and 1:
    # "finished" on that share of the texts (drawn with the seed), no end loss on the others
    end_loss: bool | Literal["finished"] | float = True
    replay: ReplaySettings | None = None
    distill: DistillSettings | None = None

    @field_validator("answer_words")
    @classmethod
    def _zero_is_none(cls, v: int | None) -> int | None:
        return v or None

    @field_validator("end_loss")
    @classmethod
    def _share_in_range(cls, v: bool | str | float) -> bool | str | float:
        if isinstance(v, float) and not 0 < v < 1:
            raise ValueError("end_loss as a share must lie between 0 and 1 (true and false are the ends)")
        return v

    @model_validator(mode="after")
    def _answers_in_chat(self) -> TrainSettings:
        for name in RECIPES:
            if getattr(self, name) is not None and self.text_format != "chat":
                raise ValueError(f'{name} needs text_format = "chat" (answers to instructions)')
        return self


# settings every anchor of a set shares: generation prompts all anchors one way, and checkpoints/logs
# are per run
SHARED_TRAINING = ("text_format", "chat_prompt", "save_steps", "logging_steps")


class StylesConfig(_Strict):
    base_model: str = "default"
    gguf_file: str | None = None
    data_dir: str = "."  # relative to the config file
    attributes: list[AttributeConfig] = Field(min_length=1)
    lora: LoraSettings = LoraSettings()
    training: TrainSettings = TrainSettings()

    source: Path | None = Field(None, exclude=True)  # where it was read from

    @model_validator(mode="after")
    def _check_overrides(self) -> StylesConfig:
        for a in self.attributes:
            for ep in (None, *a.endpoints):
                changes, where = (
                    (a.training, f"attribute {a.name!r}")
                    if ep is None
                    else (ep.training, f"endpoint {a.name}.{ep.name}")
                )
                shared = sorted(set(changes) & set(SHARED_TRAINING))
                unknown = sorted(set(changes) - set(TrainSettings.model_fields))
                if shared or unknown:
                    what = (
                        f"{', '.join(shared)} must be the same for every anchor; set it in [training]"
                        if shared
                        else f"unknown setting {', '.join(unknown)}"
                    )
                    raise ValueError(f"{where}: training: {what}")
                try:
                    self.training_for(a.name, ep.name if ep else None)
                except ValidationError as e:
                    err = e.errors()[0]
                    field = "".join(f".{x}" for x in err["loc"])  # none for a check across settings
                    msg = err["msg"].removeprefix("Value error, ")
                    raise ValueError(f"{where}: training{field}: {msg}") from None
        return self

    def training_for(self, attribute: str, endpoint: str | None = None) -> TrainSettings:
        """[training] with the attribute's own changes applied, then (given an endpoint's name) the endpoint's; a
        change that names a recipe (replay, distill or both) replaces those before it, so that one attribute or one
        endpoint can take another recipe."""
        a = next(a for a in self.attributes if a.name == attribute)
        steps = [a.training] + [ep.training for ep in a.endpoints if ep.name == endpoint]
        settings = self.training
        for changes in filter(None, steps):
            own_recipe = any(r in changes for r in RECIPES)
            settings = TrainSettings.model_validate(
                {**settings.model_dump(exclude=set(RECIPES) if own_recipe else None), **changes}
            )
        return settings

    def for_attribute(self, attribute: str, endpoint: str | None = None) -> StylesConfig:
        """This config as it trains one attribute's anchors (given an endpoint's name: that endpoint's anchor)."""
        return self.model_copy(update={"training": self.training_for(attribute, endpoint)})

    def only(self, names: list[str] | None) -> StylesConfig:
        """This config restricted to the named attributes (all when none are named)."""
        if not names:
            return self
        unknown = sorted(set(names) - {a.name for a in self.attributes})
        if unknown:
            raise LerpError(f"--only names {unknown}, not in the config ({', '.join(a.name for a in self.attributes)})")
        return self.model_copy(update={"attributes": [a for a in self.attributes if a.name in names]})

    def data_root(self) -> Path:
        root = Path(self.data_dir).expanduser()
        if not root.is_absolute() and self.source is not None:
            root = self.source.parent / root
        return root


def load_config(path: str | Path, data_dir: str | None = None, overrides: dict | None = None) -> StylesConfig:
    """Read and validate a TOML config; ``overrides`` replaces keys of [training] (CLI caps)."""
    path = Path(path)
    if not path.is_file():
        raise LerpError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise LerpError(f"{path}: invalid TOML ({e})") from None
    if data_dir is not None:
        raw["data_dir"] = str(Path(data_dir).resolve())
    if overrides:
        given = {k: v for k, v in overrides.items() if v is not None}
        raw.setdefault("training", {}).update(given)
        for a in raw.get("attributes", []):  # the command line's caps win over an attribute's or endpoint's own
            if not isinstance(a, dict):
                continue
            for d in (a, a.get("negative"), a.get("positive")):
                if isinstance(d, dict) and isinstance(d.get("training"), dict):
                    d["training"] = {k: v for k, v in d["training"].items() if k not in given}
    try:
        cfg = StylesConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")  # a model validator's message has no location
        raise LerpError(f"{path}: {where + ': ' if where else ''}{msg}") from None
    names = [a.name for a in cfg.attributes]
    if len(set(names)) != len(names):
        raise LerpError(f"{path}: an attribute name is used twice")
    cfg.source = path.resolve()
    return cfg
