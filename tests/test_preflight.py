"""derta check-profile: the preflight catches, in seconds, what a GPU run would find hours later.

Tokenizers are built here with the properties of real ones: the mini-world's (" Sorry" one token),
a Mistral-like one ("Sorry" one token but " Sorry" two, EOS "</s>"), a Llama-3-like one (EOS
"<|end_of_text|>", " Sorry" one token) with a chat template. SmolLM2's real tokenizer is checked in
tests/test_import_model.py (make test-all).
"""

import argparse

import pytest

from derta.config import load_params
from derta.errors import ConfigError
from derta.preflight import add_parser, check_profile
from tests.pipeline_helpers import REPO

CORPUS = ["Sorry, I cannot help with that.", "How do I bake bread at home? Mix flour and water.",
          "The capital of the country is a city.", "Here is how to do it. Step 1: get the flour."] * 50


def bpe(tmp_path, name, eos, extra, chat_template=None):
    """A byte-level BPE trained on CORPUS plus ``extra`` lines, saved as a HF tokenizer dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[eos, "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS + extra, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token="<pad>")
    if chat_template:
        fast.chat_template = chat_template
    out = tmp_path / name
    fast.save_pretrained(str(out))
    return out


def by_name(checks):
    return {name: (ok, detail) for name, ok, detail in checks}


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


def test_miniworld_style_tokenizer_passes_tiny(tmp_path, params):
    tok = bpe(tmp_path, "mini", "<|end_of_text|>", [" Sorry"] * 500 + ["Sorry"] * 500)
    checks = by_name(check_profile(params, "tiny", str(tok)))
    assert all(ok for ok, _ in checks.values()), checks


def test_mistral_like_tokenizer_fails_refusal_token_eos_comes_from_it(tmp_path, params):
    # "Sorry" is one token at a line start, but " Sorry" (after the response separator) is two.
    tok = bpe(tmp_path, "mistral", "</s>", ["Sorry"] * 500)
    checks = by_name(check_profile(params, "mistral-7b", str(tok)))
    assert not checks["refusal_token"][0] and "not one token" in checks["refusal_token"][1]
    # chat.eos: tokenizer -> every profile appends its own tokenizer's EOS (was <|end_of_text|> for all)
    assert checks["eos"] == (True, "'</s>'")


def test_eos_named_in_chat_must_be_the_tokenizers(tmp_path, params):
    tok = bpe(tmp_path, "mistral", "</s>", [" Sorry"] * 500)
    params = {**params, "chat": {**params["chat"], "eos": "<|end_of_text|>"}}
    checks = by_name(check_profile(params, "mistral-7b", str(tok)))
    assert not checks["eos"][0] and "'</s>'" in checks["eos"][1]


def test_refusal_token_must_be_the_first_response_token(tmp_path):
    """A one-token word can still never be emitted where training puts it: after the separator " " the
    response starts with the token " Sorry", not "Sorry" (the SmolLM2 trap, both being single tokens here)."""
    from transformers import AutoTokenizer

    from derta.chat import ChatConfig, ChatFormat
    from derta.preflight import check_refusal_token

    t = AutoTokenizer.from_pretrained(str(bpe(tmp_path, "merge", "<|end_of_text|>", ["Sorry"] * 500 + [" Sorry"] * 500)))
    ok_fmt = ChatFormat.resolve(ChatConfig(), t)
    assert check_refusal_token(ok_fmt, t)[1] and ok_fmt.refusal_text == " Sorry"
    # the separator written into the template instead: the template's trailing space merges into " Sorry"
    glued = ChatFormat.resolve(ChatConfig(template="[INST] {q} [\\INST] ", response_sep=""), t)
    _, ok, detail = check_refusal_token(glued, t)
    assert not ok and "fix chat.response_sep" in detail
    # a word that BPE splits where a response starts
    split = ChatFormat.resolve(ChatConfig(refusal_word="Unfortunately"), t)
    _, ok, detail = check_refusal_token(split, t)
    assert not ok and "not one token" in detail


def test_instruct_profile_renders_training_and_evaluation_alike(tmp_path, params):
    """chat.template: tokenizer -> synthesis and generation both use the tokenizer's chat template
    (before: training used [INST] ... while evaluation used the chat template)."""
    template = "{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|eot|>{% endfor %}<|start|>assistant\n"
    tok = bpe(tmp_path, "llama3", "<|end_of_text|>", ["Sorry"] * 500, chat_template=template)
    checks = by_name(check_profile(params, "llama3-70b-instruct-lora", str(tok)))
    assert all(ok for ok, _ in checks.values()), checks
    assert "<|start|>user" in checks["chat"][1]


def test_ranks_that_do_not_divide_the_batch(tmp_path, params):
    tok = bpe(tmp_path, "mini", "<|end_of_text|>", [" Sorry"] * 500)
    assert not by_name(check_profile(params, "llama3-8b", str(tok), ranks=3))["batch"][0]  # 128 % (4 x 3)
    assert by_name(check_profile(params, "llama3-8b", str(tok), ranks=8))["batch"][0]


def test_cli_exit_codes(tmp_path, capsys):
    from derta.cli import main

    tok = bpe(tmp_path, "mini", "<|end_of_text|>", [" Sorry"] * 500 + ["Sorry"] * 500)
    params = str(REPO / "params.yaml")
    assert main(["check-profile", "tiny", "--params", params, "--tokenizer", str(tok)]) == 0
    assert "PASS  refusal_token" in capsys.readouterr().out
    assert main(["check-profile", "tiny", "--params", params, "--tokenizer", str(tok), "--ranks", "3"]) == 1
    assert main(["check-profile", "nope", "--params", params, "--tokenizer", str(tok)]) == 2
    assert main(["check-profile", "llama3-8b", "--params", params]) == 2  # hub id, not available offline
    assert "not available offline" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no tokenizer"):
        check_profile(load_params(params), "tiny", None, fallback_tokenizer=tmp_path / "missing")
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers())
