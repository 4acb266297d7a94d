/* cli/commands.h — subcommands of the `moerun` binary.
 *
 * Each takes the arguments after the subcommand name (argv[0] is the
 * subcommand) and returns the process exit status: 0 success, 1 runtime
 * error, 2 usage error. Results go to stdout, diagnostics to stderr.
 */
#ifndef MR_COMMANDS_H
#define MR_COMMANDS_H

int mr_cmd_generate(int argc, char **argv);
int mr_cmd_synth(int argc, char **argv);
int mr_cmd_inspect(int argc, char **argv);
int mr_cmd_bench(int argc, char **argv);
int mr_cmd_plan(int argc, char **argv);
/* `moerun plan capacity` (argv[0] = "plan", argv[1] = "capacity"). */
int mr_cmd_plan_capacity(int argc, char **argv);
int mr_cmd_report(int argc, char **argv);
int mr_cmd_trace(int argc, char **argv);

#endif
