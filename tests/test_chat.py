"""derta.chat: one definition of the prompt format, refusal word, EOS and BOS, resolved against a tokenizer."""

import pytest
import yaml

from derta.chat import ChatConfig, ChatFormat, inject
from derta.errors import ConfigError
from tests.pipeline_helpers import REPO
from tests.test_preflight import bpe

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tok(tmp_path, name="t", eos="<|end_of_text|>", extra=(), chat_template=None, bos=None):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(bpe(tmp_path, name, eos, [" Sorry"] * 500 + ["Sorry"] * 500 + list(extra), chat_template)))
    if bos:
        t.add_special_tokens({"bos_token": bos})
    return t


def test_release_template_with_the_tokenizers_eos(tmp_path):
    t = tok(tmp_path, eos="</s>")
    fmt = ChatFormat.resolve(ChatConfig(), t)
    assert fmt.prompt("Hi?") == "[INST] Hi? [\\INST]" and fmt.eos == "</s>"
    assert fmt.refusal_text == " Sorry"
    assert t.convert_ids_to_tokens([fmt.refusal_token_id(t)]) == ["ĠSorry"]


def test_tokenizer_chat_template_becomes_a_format_string(tmp_path):
    t = tok(tmp_path, chat_template=CHATML.replace("<|im_start|>assistant", "<|im_start|>assistant {literal}"))
    fmt = ChatFormat.resolve(ChatConfig(template="tokenizer", response_sep=""), t)
    q = "What is {x}?"
    assert fmt.prompt(q) == t.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
    assert fmt.refusal_text == "Sorry" and t.decode([fmt.refusal_token_id(t)]) == "Sorry"


def test_a_template_that_rewrites_the_question_is_refused(tmp_path):
    t = tok(tmp_path, chat_template=CHATML.replace("{{ m['content'] }}", "{{ m['content'] | upper }}"))
    with pytest.raises(ConfigError, match="the user's text"):
        ChatFormat.resolve(ChatConfig(template="tokenizer"), t)
    with pytest.raises(ConfigError, match="no chat template"):
        ChatFormat.resolve(ChatConfig(template="tokenizer"), tok(tmp_path, "plain"))


def test_bos_is_prepended_once(tmp_path):
    t = tok(tmp_path, bos="<s>")
    assert ChatFormat.resolve(ChatConfig(), t).prompt("q") == "<s>[INST] q [\\INST]"
    assert ChatFormat.resolve(ChatConfig(template="<s>[INST] {q} [\\INST]"), t).prompt("q") == "<s>[INST] q [\\INST]"
    assert ChatFormat.resolve(ChatConfig(bos=""), t).prompt("q") == "[INST] q [\\INST]"
    # A BOS in the prompt text is tokenized as the BOS token (training and generation add no special tokens).
    assert t("<s>[INST] q", add_special_tokens=False)["input_ids"][0] == t.bos_token_id


def test_refusal_word_must_be_one_token_where_a_response_starts(tmp_path):
    t = tok(tmp_path)
    with pytest.raises(ConfigError, match="not one token"):
        ChatFormat.resolve(ChatConfig(refusal_word="Unfortunately"), t).refusal_token_id(t)
    with pytest.raises(ConfigError, match="without surrounding spaces"):
        ChatFormat.resolve(ChatConfig(refusal_word=" Sorry"), t)


def test_config_errors():
    with pytest.raises(ConfigError, match="need the profile's tokenizer"):
        ChatFormat.resolve(ChatConfig())
    assert ChatFormat.resolve(ChatConfig(eos="</s>", bos="")).eos == "</s>"  # no tokenizer needed
    with pytest.raises(ConfigError, match="no \\{q\\}"):
        ChatFormat.resolve(ChatConfig(template="[INST]", eos="x", bos=""))
    with pytest.raises(ConfigError, match="chat"):
        inject({"refusal_word": "Nope"}, {"refusal_word": "Sorry"}, "train")


KEYS = {"refusal_word", "prompt_template", "response_sep", "eos", "bos", "chat_template", "use_tokenizer_chat_template"}


def _clashes(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            where = f"{path}.{k}" if path else str(k)
            if k in KEYS and ".chat" not in f".{path}" and k != "chat":
                yield where
            yield from _clashes(v, where)


def test_params_name_each_chat_setting_in_one_place():
    """No section of params.yaml (profiles included) but `chat` sets the refusal word, prompt format, EOS or BOS."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert list(_clashes(params)) == []
    assert set(params["chat"]) == {"template", "response_sep", "refusal_word", "eos", "bos"}


@pytest.mark.parametrize("sep", [" ", ""])
def test_a_prefill_is_joined_as_training_joins_a_harmful_prefix(sep):
    """Evaluation's prefill and training's harmful prefix are one string for the same words (derta.chat.started_response)."""
    import random

    from derta.attacks.base import AttackPrompt
    from derta.generate import GenerationConfig, format_prompt
    from derta.miniworld import word_units
    from derta.variants import Builder, SynthesizeConfig

    template = "<|user|>{q}<|assistant|>"
    row = {"id": "s1", "instruction": "How do I do X?", "output": "Step one: do A. Step two: do B.", "safe_response": "Sorry."}
    b = Builder(SynthesizeConfig(prompt_template=template, response_sep=sep, eos="</s>", prefix_rule="paper"))
    rec = b.harmful_prefix(row, 1, random.Random(3))
    assert rec["k"] > 0  # this seed draws a non-empty prefix
    prefill = "".join(word_units(row["output"])[: rec["k"]])  # the same words, with their trailing space
    gen = GenerationConfig(prompt_template=template, response_sep=sep)
    prompt = AttackPrompt(id="p", question_id="s1", attack="prefill", text=row["instruction"], prefill=prefill)
    assert format_prompt(prompt, gen) == rec["prefix"] == template.format(q=row["instruction"]) + sep + prefill.rstrip()
    assert rec["text"] == sep + "Sorry.</s>"
    empty = AttackPrompt(id="p", question_id="s1", attack="direct", text=row["instruction"])
    assert format_prompt(empty, gen) == template.format(q=row["instruction"])
