// Does llama.cpp load and run a GGUF file (an `ingot synth` one, say)? Loads it, decodes a
// prompt and 4 greedy tokens, checks that every logit is finite, prints the tokens (compare
// with `ingot run --model F --backend cpu -n 4 --json "Hello world, this is a test"`) and,
// on stderr, the top two logits of each step. Exit status 0 when all went well.
//
// Build against a llama.cpp checkout (libllama only, for the CPU at hand):
//   cmake -S llama.cpp -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
//     -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
//     -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=ON
//   ninja -C build llama
//   gcc -O1 -o llama_cpp_check scripts/llama_cpp_check.c -Illama.cpp/include -Illama.cpp/ggml/include \
//     -Lbuild/bin -lllama -lggml -lggml-base -lm -Wl,-rpath,$PWD/build/bin
//   ./llama_cpp_check FILE.gguf
#include "llama.h"
#include <math.h>
#include <stdio.h>
#include <string.h>

static void quiet(enum ggml_log_level level, const char * text, void * ud) {
    (void) ud;
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static int check(const float * logits, int n) {
    int best = 0, bad = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(logits[i])) bad++;
        if (logits[i] > logits[best]) best = i;
    }
    if (bad) { fprintf(stderr, "%d non-finite logits\n", bad); return -1; }
    int second = best == 0 ? 1 : 0;
    for (int i = 0; i < n; i++) if (i != best && logits[i] > logits[second]) second = i;
    float lo = logits[0], hi = logits[0];
    for (int i = 0; i < n; i++) { if (logits[i] < lo) lo = logits[i]; if (logits[i] > hi) hi = logits[i]; }
    fprintf(stderr, "[top %d %.5f, second %d %.5f, range %.4f..%.4f]\n", best, logits[best], second, logits[second], lo, hi);
    return best;
}

int main(int argc, char ** argv) {
    if (argc < 2) return 2;
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { printf("%s: LOAD FAILED\n", argv[1]); return 1; }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 128;
    cp.n_batch = 128;
    struct llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { printf("%s: CONTEXT FAILED\n", argv[1]); return 1; }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    const char * text = "Hello world, this is a test";
    llama_token toks[64];
    int n = llama_tokenize(vocab, text, (int) strlen(text), toks, 64, true, false);
    if (n <= 0) { printf("tokenize failed\n"); return 1; }
    if (llama_decode(ctx, llama_batch_get_one(toks, n))) { printf("decode failed\n"); return 1; }
    char desc[256];
    llama_model_desc(model, desc, sizeof desc);
    printf("%s: loaded (%s, n_vocab %d, %d layers, n_embd %d), prompt %d tokens; greedy:", argv[1], desc, n_vocab,
           llama_model_n_layer(model), llama_model_n_embd(model), n);
    for (int i = 0; i < 4; i++) {
        int t = check(llama_get_logits_ith(ctx, -1), n_vocab);
        if (t < 0) return 1;
        printf(" %d", t);
        llama_token tok = t;
        if (llama_decode(ctx, llama_batch_get_one(&tok, 1))) { printf("decode failed\n"); return 1; }
    }
    printf("; logits finite\n");
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
