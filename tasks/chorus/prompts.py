"""The CHORUS prompts pipeline: object categories -> subject-verb-object prompts x 22 viewpoint phrases.

Two generators: `offline` (default, no network) composes prompts from the lexicon's verbs, subjects and
settings; `llm` sends the paper's request to any OpenAI-compatible endpoint (temperature 1.0) and asks
again while the answer does not have exactly M lines. Like the paper, M is random in 3..20 per category
unless `prompts_per_category` fixes it. Prompts are light, so they are made while planning; the stage
annotates each one.
"""

from __future__ import annotations

import re
import time
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hoi_factory import ids
from hoi_factory.columns import column
from hoi_factory.config import ExecutionConfig, RunConfig, Settings
from hoi_factory.context import StageContext
from hoi_factory.pipeline import Pipeline, PlanError
from hoi_factory.scrub import scrub
from hoi_factory.stage import MapStage, Row
from tasks.chorus import lexicon

VIEWPOINT_SUFFIXES = (
    "", ", side view", ", back view", ", front view", ", top view", ", bottom view", ", realistic photo",
    ", seen from side", ", seen from back", ", seen from various views", ", seen from close view",
    ", seen from far away", ", scenic view", ", full body photo", ", hand photo", ", face photo",
    ", photo taken close to hand", ", photo taken close to face", ", selfie", ", close-up photo", ", hand only",
    ", face only",
)
LLM_REQUEST = (
    "Give me {m} simple prompts, one per line, in the form subject-verb-object, describing a person "
    "physically interacting with a {category}. The subject must be a person and the object's category must "
    "be {category}. Use diverse and general words, no pronouns, common sense, and verbs that depict a "
    "physical interaction between the person and the {category}. Output only the {m} lines."
)


LLM_KEY_VARIABLE = "HOI_LLM_API_KEY"


class LLMError(PlanError):
    """The LLM endpoint failed or kept answering in the wrong shape."""


class LLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field("http://127.0.0.1:8000/v1", description="an OpenAI-compatible API")
    model: str = Field("gpt-4o-mini", description="model name at that endpoint")
    api_key_env: str = Field(LLM_KEY_VARIABLE, description="environment variable holding the API key (only "
                             "HOI_LLM_API_KEY, which the run's settings read)")
    max_attempts: int = Field(5, ge=1, le=50, description="requests per category before giving up")
    backoff_seconds: float = Field(1.0, ge=0, description="first wait after a failed request (doubles)")
    timeout_seconds: float = Field(60.0, gt=0)


class PromptsConfig(RunConfig):
    categories: list[str] = Field(..., min_length=1, description="COCO / LVIS object category names")
    generator: Literal["offline", "llm"] = "offline"
    prompts_per_category: int | None = Field(None, ge=1, le=200, description="M; default random 3..20 (paper)")
    viewpoints: bool = Field(True, description="add the 22 viewpoint phrases to every prompt")
    llm: LLMConfig = Field(default_factory=LLMConfig)

    @field_validator("categories")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        lexicon.check_categories(names, procedural=False)
        if len(set(names)) != len(names):
            raise ValueError("categories are listed twice")
        return names


def prompt_count(config: PromptsConfig, category: str) -> int:
    if config.prompts_per_category:
        return config.prompts_per_category
    return int(np.random.default_rng(ids.sample_seed(str(config.seed), category, 0)).integers(3, 21))


def offline_prompts(category: str, count: int, seed: int) -> list[str]:
    """`count` distinct prompts from the lexicon (verbs cycle so every interaction is represented)."""
    verbs = list(lexicon.CATEGORIES[category].interactions) if category in lexicon.CATEGORIES else ["holding", "using"]
    rng = np.random.default_rng(seed)
    prompts: list[str] = []
    for attempt in range(count * 50):
        verb = verbs[len(prompts) % len(verbs)]
        setting = lexicon.SETTINGS[rng.integers(len(lexicon.SETTINGS))]
        prompt = f"{lexicon.SUBJECTS[rng.integers(len(lexicon.SUBJECTS))]} {verb} a {category} {setting}".strip()
        if prompt not in prompts:
            prompts.append(prompt)
        if len(prompts) == count:
            return prompts
    raise PlanError(f"the offline lexicon cannot make {count} distinct prompts for {category!r}")


def _clean_lines(text: str) -> list[str]:
    lines = [re.sub(r"^\s*(\d+[.)]|[-*•])\s*", "", line).strip().strip('"') for line in text.splitlines()]
    return [line for line in lines if line]


def llm_api_key(settings: Settings, llm: LLMConfig) -> str:
    """The endpoint's key, from the run's settings (tasks never read the environment); a local server takes any."""
    if llm.api_key_env != LLM_KEY_VARIABLE:
        raise PlanError(f"llm.api_key_env={llm.api_key_env!r}: the run's settings read the key from "
                        f"{LLM_KEY_VARIABLE} only; set that variable instead")
    return settings.llm_api_key.get_secret_value() if settings.llm_api_key is not None else "not-set"


def llm_prompts(category: str, count: int, llm: LLMConfig, api_key: str = "not-set") -> list[str]:
    """The paper's request; retried (with backoff on errors) until the answer has exactly `count` lines."""
    import openai  # lazy: only this generator needs it

    client = openai.OpenAI(base_url=llm.base_url, api_key=api_key, timeout=llm.timeout_seconds, max_retries=0)
    request = LLM_REQUEST.format(m=count, category=category)
    last = "no answer"
    wait = llm.backoff_seconds
    for _ in range(llm.max_attempts):
        try:
            answer = client.chat.completions.create(model=llm.model, temperature=1.0,
                                                    messages=[{"role": "user", "content": request}])
            lines = _clean_lines(answer.choices[0].message.content or "")
            if len(lines) == count:
                return lines
            last = f"answered {len(lines)} lines instead of {count}"
            continue  # the paper's rule: ask again, no wait needed
        except openai.OpenAIError as exc:  # its text may quote the answer, and the answer the request's key
            last = scrub(f"{type(exc).__name__}: {exc}", [api_key])
        time.sleep(wait)
        wait *= 2
    raise LLMError(f"LLM at {llm.base_url} (model {llm.model!r}) gave no usable prompts for {category!r} "
                   f"after {llm.max_attempts} attempts; last: {last}")


class DescribePrompt(MapStage):
    """Adds the lexicon verb (what the procedural stand-in can stage) to each prompt."""

    batch_size = 256
    needs = frozenset({"base_prompt", "category"})
    makes = frozenset({"verb"})

    def process_row(self, row: Row) -> Row:
        return {**row, "verb": lexicon.verb_of(row["base_prompt"], row["category"]) or ""}


class PromptsPipeline(Pipeline[PromptsConfig]):
    name = "chorus-prompts"
    description = "CHORUS: object categories -> interaction prompts x 22 viewpoint phrases"
    config_class = PromptsConfig
    schema = pa.schema([
        column("category", pa.string(), "the object category (COCO name)"),
        column("prompt", pa.string(), "the text-to-image prompt: the base prompt and its viewpoint phrase"),
        column("base_prompt", pa.string(), "a subject-verb-object prompt about a person and the object"),
        column("augmentation", pa.string(), "the viewpoint phrase added to the base prompt (empty: none)"),
        column("verb", pa.string(), "the interaction verb the lexicon reads in the prompt (empty: none known)"),
        column("generator", pa.string(), "what wrote the base prompt: offline (the lexicon) or llm"),
    ])
    item_keys = frozenset({"input_id", "index", "category", "base_prompt", "prompt", "augmentation", "generator"})

    def plan(self, config: PromptsConfig, context: StageContext) -> list[dict]:
        items = []
        suffixes = VIEWPOINT_SUFFIXES if config.viewpoints else ("",)
        for category in config.categories:
            count = prompt_count(config, category)
            if config.generator == "llm":
                prompts = llm_prompts(category, count, config.llm, llm_api_key(context.settings, config.llm))
            else:
                prompts = offline_prompts(category, count, ids.sample_seed(str(config.seed), category, 1))
            for number, prompt in enumerate(prompts):
                for index, suffix in enumerate(suffixes):
                    items.append({"input_id": f"{category}/{number:03d}", "index": index, "category": category,
                                  "base_prompt": prompt, "prompt": prompt + suffix,
                                  "augmentation": suffix.lstrip(", "), "generator": config.generator})
        return items

    def stages(self, config: PromptsConfig):
        return [DescribePrompt()]

    def demo_config(self, inputs, execution: ExecutionConfig) -> PromptsConfig:
        return PromptsConfig(categories=list(lexicon.DEMO_CATEGORIES), prompts_per_category=2, viewpoints=True,
                             execution=execution, output={"dataset": "demo-chorus-prompts"})
