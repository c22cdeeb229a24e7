// The README's example ("Code written for Deno Sandbox"), verbatim: tests/integration/sdk.sh
// runs it against kilnd, so the README cannot drift from what works.
import { Sandbox, Client } from "@deno/sandbox";

const sandbox = await Sandbox.create({ memory: "1GiB", timeout: "10m", labels: { agent: "a1" } });
try {
  console.log(sandbox.id);                                    // sbx_loc_...
  console.log(await sandbox.sh`uname -s; whoami`.text());     // Linux, app
  await sandbox.fs.writeTextFile("hello.ts", "console.log('hi from deno', Deno.version.deno)");
  const p = await sandbox.spawn("deno", { args: ["run", "hello.ts"], stdout: "piped" });
  for await (const chunk of p.stdout) process.stdout.write(chunk);
  console.log(await sandbox.deno.eval("[1, 2, 3].map((x) => x * 2)")); // [ 2, 4, 6 ]
  console.log(await sandbox.extendTimeout("30m"));            // the new deadline
  console.log(await new Client().sandboxes.list({ labels: { agent: "a1" } }));
} finally {
  await sandbox.kill();
}
