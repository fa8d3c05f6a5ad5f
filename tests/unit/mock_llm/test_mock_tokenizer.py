from quotagate.mock_llm import count_tokens, split_tokens
from quotagate.mock_llm.tokenizer import count_chat_tokens


def test_words_and_punctuation_are_separate_tokens() -> None:
    assert split_tokens("Hello, world! It's 42.") == [
        "Hello",
        ",",
        "world",
        "!",
        "It",
        "'",
        "s",
        "42",
        ".",
    ]


def test_whitespace_is_not_a_token() -> None:
    assert split_tokens("  a \n\t b  ") == ["a", "b"]
    assert count_tokens("") == 0
    assert count_tokens("   ") == 0


def test_count_matches_split() -> None:
    text = "[[mock:tokens=5]] say hi"
    assert count_tokens(text) == len(split_tokens(text)) == 11


def test_chat_accounting_adds_three_per_message_and_three_for_the_reply() -> None:
    assert count_chat_tokens(["hello there", "hi"]) == (2 + 3) + (1 + 3) + 3
    assert count_chat_tokens([""]) == 6
