from quantomni.config.patterns import LayerPattern, compile_patterns, first_match


def test_glob_matches_whole_name():
    p = LayerPattern.parse("proj_out")
    assert p.matches("proj_out")
    assert not p.matches("single_transformer_blocks.0.proj_out")
    assert LayerPattern.parse("*.proj_out").matches("single_transformer_blocks.0.proj_out")


def test_regex_uses_fullmatch():
    p = LayerPattern.parse(r"re:transformer_blocks\.\d+\.attn\.to_(q|k)")
    assert p.matches("transformer_blocks.12.attn.to_q")
    assert not p.matches("transformer_blocks.12.attn.to_v")
    assert not p.matches("x.transformer_blocks.1.attn.to_q")


def test_first_match_follows_order():
    pats = compile_patterns(["re:.*to_q", "*.attn.*"])
    assert first_match(pats, "b.attn.to_q").text == "re:.*to_q"
    assert first_match(pats, "b.attn.to_k").text == "*.attn.*"
    assert first_match(pats, "b.ff") is None
