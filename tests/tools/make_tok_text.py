#!/usr/bin/python3
"""make_tok_text.py N SEED - N random words and separators (seeded) that stress a tokenizer's
split rules: contractions in both cases and with a curly apostrophe, digit runs, whitespace
runs (tabs, CRLF, no-break and ideographic spaces), many scripts, emoji with modifiers and flags,
combining marks (decomposed forms, for NFC), ligatures. Written to stdout as UTF-8."""
import random, sys
random.seed(int(sys.argv[2]))
pool = ["the", "The", "don't", "DON'T", "I'll", "we've", "she'd", "it's", "IT'S", "you're", "I'm",
        "naïve", "café", "cafe\u0301", "Ångström", "straße", "ﬁne", "Ελληνικά", "русский", "日本語のテキスト",
        "中文", "한국어", "العربية", "עברית", "हिन्दी", "ไทย", "😀", "👍🏽", "🇩🇪", "e\u0301\u0302",
        "1", "12", "123", "1234", "12345678", "3.14159", "1,000,000", "0x1F", "v2.0-rc1",
        "$100", "€5", "½", "²", "Ⅻ", "٣٤٥", "x²+y²", "--", "...", "!!!", "?!", "(a)", "[b]", "{c}",
        "foo_bar", "#include", "<tag>", "a@b.c", "http://example.org/x?y=1", "\\n", "'", "\"",
        "’s", "'S", "'Ll", "it’ll", "ǅ", "ß", "İ", "ﬀ"]
ws = [" ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\u00a0", "\u3000", "\u2009", "\n   ", "\t\t "]
out = []
for _ in range(int(sys.argv[1])):
    out.append(random.choice(pool)); out.append(random.choice(ws))
sys.stdout.write("".join(out))
