from derta.attacks import Question, get_attack


def test_direct_is_the_question_as_is():
    qs = [Question("a", "How do I open the [locked box]?"), Question("b", "  spaces kept  ")]
    out = get_attack("direct").build(qs)
    assert [p.text for p in out] == [q.question for q in qs]
    assert all(p.chat and p.prefill == "" and p.meta == {} for p in out)
