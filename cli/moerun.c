/* cli/moerun.c — the `moerun` command: dispatch to subcommands. */
#include <stdio.h>
#include <string.h>

#include "../common/blas_core.h"
#include "../common/process.h"
#include "commands.h"
#include "mr_build_config.h"

static void usage(FILE *out)
{
    fprintf(out,
            "moerun %s — disaggregated prefill/decode runtime for DeepSeek-V3-class MoE models\n"
            "\n"
            "usage: moerun <command> [options]\n"
            "\n"
            "commands:\n"
            "  generate   single-process reference engine (the correctness oracle)\n"
            "  synth      write a random-weight model in the real checkpoint format\n"
            "  inspect    validate a model directory and summarize it\n"
            "  bench      benchmarks (ops, decode, layer, cluster, transport)\n"
            "  plan       placement: expert replicas from measured load; capacity: nodes for a\n"
            "             request trace at TTFT/TPOT targets (roofline model + simulation)\n"
            "  report     latency percentiles and SVG plots (CDFs, re-placement) of a cluster run\n"
            "  trace      a real request trace (Azure CSV, Mooncake jsonl) as cluster requests\n"
            "\n"
            "The cluster is started with launch/moerun-cluster.\n"
            "Run 'moerun <command> --help' for the options of a command.\n",
            MR_VERSION);
}

int main(int argc, char **argv)
{
    mr_blas_pick_core(argv); /* may re-exec with OPENBLAS_CORETYPE set */
    mr_process_init();
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "generate")) return mr_cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "synth")) return mr_cmd_synth(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return mr_cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return mr_cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "plan")) return mr_cmd_plan(argc - 1, argv + 1);
    if (!strcmp(cmd, "report")) return mr_cmd_report(argc - 1, argv + 1);
    if (!strcmp(cmd, "trace")) return mr_cmd_trace(argc - 1, argv + 1);
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("moerun %s\n", MR_VERSION);
        return 0;
    }
    fprintf(stderr, "moerun: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
