// embedstream's ApplicationMaster: YARN starts it in the application's first container; it starts
// the Rust driver (`./embedstream yarn-driver`) beside it and relays the driver's requests to YARN.
// The driver plans and runs the query; this class only speaks YARN's protocols, through Hadoop's
// own client libraries (as Spark's, Flink's and Skein's masters do).
//
// The local channel is the driver's standard input and output, one request per line, fields
// separated by tabs (driver/src/launcher/yarn.rs is the other end):
//   register  HOST PORT TRACKING_URL EXECUTOR_ARGS
//                                               -> ok MAX_MEMORY_MB MAX_VCORES ATTEMPT
//             (EXECUTOR_ARGS: shell words, already quoted, each executor's command line ends
//             with: its TLS flags)
//   allocate  WANTED VCORES MEMORY_MB PROGRESS RELEASE,...
//                                               -> allocated ID NODE   (a line per container)
//                                                  completed ID EXIT_STATUS OVER_MEMORY DIAGNOSTICS
//                                                  tokens FILE ABOUT (renewed delegation tokens)
//                                                  renewal-failed EXPIRY WHY (renewal gave up)
//                                                  end
//   finish    SUCCEEDED|FAILED DIAGNOSTICS      -> ok
// An answer that fails is `error MESSAGE` (then `end` for allocate). The driver's log is its
// standard error, the container's `driver.log`.
//
// Executors run `./embedstream executor` in containers of their own, with the staged files
// (the binary, the ONNX Runtime library, the model files, the application's secret, its TLS
// certificate and key) localized
// from the staging directory. When the
// driver exits without `finish` (it was killed), this master exits 1 without unregistering, so
// YARN starts another attempt if attempts are left; on the last attempt it unregisters FAILED.
// The staging directory is removed when the application has finished (SUCCEEDED or FAILED on
// the last attempt).
package io.embedstream.yarn;

import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.PrintWriter;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.io.Text;
import org.apache.hadoop.security.Credentials;
import org.apache.hadoop.security.UserGroupInformation;
import org.apache.hadoop.security.token.Token;
import org.apache.hadoop.security.token.TokenIdentifier;
import org.apache.hadoop.yarn.api.ApplicationConstants;
import org.apache.hadoop.yarn.api.protocolrecords.AllocateResponse;
import org.apache.hadoop.yarn.api.protocolrecords.RegisterApplicationMasterResponse;
import org.apache.hadoop.yarn.api.records.Container;
import org.apache.hadoop.yarn.api.records.ContainerExitStatus;
import org.apache.hadoop.yarn.api.records.ContainerId;
import org.apache.hadoop.yarn.api.records.ContainerLaunchContext;
import org.apache.hadoop.yarn.api.records.ContainerStatus;
import org.apache.hadoop.yarn.api.records.FinalApplicationStatus;
import org.apache.hadoop.yarn.api.records.LocalResource;
import org.apache.hadoop.yarn.api.records.Priority;
import org.apache.hadoop.yarn.api.records.Resource;
import org.apache.hadoop.yarn.client.api.AMRMClient;
import org.apache.hadoop.yarn.client.api.AMRMClient.ContainerRequest;
import org.apache.hadoop.yarn.client.api.NMClient;
import org.apache.hadoop.yarn.conf.YarnConfiguration;
import org.apache.hadoop.yarn.security.AMRMTokenIdentifier;

public final class ApplicationMaster {
  /** The staging directory's URI, set by the client in the master's environment. */
  static final String STAGING_ENV = "EMBEDSTREAM_STAGING";
  /** The attempts YARN gives the application, as the client asked (at most the cluster's). */
  static final String MAX_ATTEMPTS_ENV = "EMBEDSTREAM_MAX_ATTEMPTS";
  /** What executors do not get of the staging directory's files (the master's own). */
  private static final Set<String> MASTER_ONLY = Set.of("job.toml", "embedstream-yarn.jar", Client.USER_KEYTAB);

  private final YarnConfiguration conf = new YarnConfiguration();
  private final AMRMClient<ContainerRequest> rm = AMRMClient.createAMRMClient();
  private final NMClient nm = NMClient.createNMClient();
  private final Path staging;
  private final boolean lastAttempt;
  private final int attempt;
  private final Map<String, Container> running = new LinkedHashMap<>();
  private final Set<String> released = new HashSet<>();
  private final List<ContainerRequest> pending = new ArrayList<>();
  private final Priority priority = Priority.newInstance(1);
  private Map<String, LocalResource> executorFiles;
  private String driverUrl;
  /** Lines for the driver that the next allocate answer carries (renewed tokens). */
  private final java.util.concurrent.ConcurrentLinkedQueue<String> pendingLines =
      new java.util.concurrent.ConcurrentLinkedQueue<>();
  /** What the driver asked every executor's command line to end with. */
  private String executorArgs = "";

  private ApplicationMaster() throws Exception {
    staging = new Path(System.getenv(STAGING_ENV));
    ContainerId self = ContainerId.fromString(System.getenv(ApplicationConstants.Environment.CONTAINER_ID.name()));
    attempt = self.getApplicationAttemptId().getAttemptId();
    int maxAttempts = Integer.parseInt(System.getenv().getOrDefault(MAX_ATTEMPTS_ENV, "1"));
    lastAttempt = attempt >= maxAttempts;
  }

  public static void main(String[] args) {
    int code;
    try {
      code = new ApplicationMaster().run();
    } catch (Throwable t) {
      t.printStackTrace();
      code = 1;
    }
    // Hadoop's clients leave threads that are not daemons.
    System.exit(code);
  }

  private int run() throws Exception {
    // With the user's keytab (submit --keytab), this master keeps the application's HDFS
    // delegation tokens fresh for as long as the query runs.
    String principal = System.getenv(Client.PRINCIPAL_ENV);
    if (principal != null && !principal.isEmpty() && new File(Client.USER_KEYTAB).isFile()) {
      Thread renewer = new Thread(() -> renewTokens(principal), "token-renewer");
      renewer.setDaemon(true);
      renewer.start();
    }
    rm.init(conf);
    rm.start();
    nm.init(conf);
    nm.start();
    FileSystem fs = staging.getFileSystem(conf);
    executorFiles = new HashMap<>();
    for (org.apache.hadoop.fs.FileStatus st : fs.listStatus(staging)) {
      String name = st.getPath().getName();
      // The Kafka secrets are the driver's to read; it hands them to its executors itself.
      if (!MASTER_ONLY.contains(name) && !name.startsWith("kafka-secret-")) {
        executorFiles.put(name, Client.localResource(fs, st.getPath()));
      }
    }
    String host = System.getenv(ApplicationConstants.Environment.NM_HOST.name());
    String logDir = System.getenv().getOrDefault("LOG_DIRS", ".").split(",")[0];
    ProcessBuilder pb = new ProcessBuilder("./embedstream", "yarn-driver", "--job", "job.toml",
        "--listen", host + ":0", "--token-file", "secret");
    pb.environment().put("EMBEDSTREAM_ORT_LIB", new File("libonnxruntime.so").getAbsolutePath());
    // The submitter's core-site.xml and hdfs-site.xml, staged beside it: hdfs:/// and HA name
    // services resolve in the driver as they did where the job was submitted.
    if (new File("core-site.xml").isFile()) {
      pb.environment().put("HADOOP_CONF_DIR", new File(".").getAbsoluteFile().getParent());
    }
    // A Kerberos ticket cache of the container's own (librdkafka's kinit for a GSSAPI source
    // writes there), not the node's shared default.
    pb.environment().put("KRB5CCNAME", "FILE:" + new File("krb5cc").getAbsolutePath());
    pb.redirectError(new File(logDir, "driver.log"));
    Process driver = pb.start();
    // YARN's SIGTERM (a kill, or the application's end) reaches this JVM: pass it on.
    Runtime.getRuntime().addShutdownHook(new Thread(driver::destroy));
    BufferedReader in = new BufferedReader(new InputStreamReader(driver.getInputStream(), StandardCharsets.UTF_8));
    PrintWriter out = new PrintWriter(new OutputStreamWriter(driver.getOutputStream(), StandardCharsets.UTF_8));
    boolean registered = false;
    String finished = null;
    String line;
    while ((line = in.readLine()) != null) {
      String[] f = line.split("\t", -1);
      try {
        switch (f[0]) {
          case "register": {
            // The executor's TLS flags decide the scheme it calls with.
            driverUrl = "http://" + f[1] + ":" + f[2];
            executorArgs = f.length > 4 ? f[4] : "";
            RegisterApplicationMasterResponse r = rm.registerApplicationMaster(f[1], Integer.parseInt(f[2]), f[3]);
            registered = true;
            out.println("ok\t" + r.getMaximumResourceCapability().getMemorySize() + "\t"
                + r.getMaximumResourceCapability().getVirtualCores() + "\t" + attempt);
            break;
          }
          case "allocate":
            allocate(f, out);
            break;
          case "finish": {
            FinalApplicationStatus status = FinalApplicationStatus.valueOf(f[1]);
            rm.unregisterApplicationMaster(status, f.length > 2 ? f[2] : "", null);
            finished = f[1];
            out.println("ok");
            break;
          }
          default:
            out.println("error\tunknown request " + f[0]);
        }
      } catch (Exception e) {
        out.println("error\t" + Client.oneLine(e));
        if (f[0].equals("allocate")) {
          out.println("end");
        }
      }
      out.flush();
    }
    int exit = driver.waitFor();
    if (finished == null) {
      String why = "the driver exited with status " + exit + " before it finished (its log: driver.log)";
      System.err.println(why);
      if (!lastAttempt) {
        return 1;
      }
      if (registered) {
        rm.unregisterApplicationMaster(FinalApplicationStatus.FAILED, why, null);
      }
      finished = "FAILED";
    }
    fs.delete(staging, true);
    return finished.equals("SUCCEEDED") ? 0 : 1;
  }

  /**
   * Spark's delegation-token manager, for HDFS: logs in again from the keytab, gets new tokens
   * for every file system the job names (renewable by the user, so that one renewal tells when
   * they expire), gives them to this master (for the executor containers it starts from now on)
   * and writes them to a file the driver is told of at its next allocate (it replaces its own
   * token file and hands them to its executors). Then again half way to the earliest expiry
   * (renewal or max lifetime; 90 s before it at the latest), so that a query runs for as long
   * as the keytab is valid. A failed attempt is logged and retried every minute while the
   * tokens in use have time left; when they have none (80 s before they expire: the Rust HDFS
   * client takes no token within 60 s of its end), the driver is told `renewal-failed WHY`
   * and ends the query with that one line, rather than with the NameNode's refusals later.
   */
  private void renewTokens(String principal) {
    String keytab = new File(Client.USER_KEYTAB).getAbsolutePath();
    List<String> uris = Client.hdfsUris(conf, System.getenv().getOrDefault(Client.HDFS_ENV, ""));
    // Until the first renewal, the tokens in use are the submit's: the ResourceManager renews
    // them up to their max date.
    long expires;
    try {
      expires = Client.earliestMaxDate(UserGroupInformation.getCurrentUser().getCredentials());
    } catch (java.io.IOException e) {
      expires = Long.MAX_VALUE;
    }
    for (int n = 1;; n++) {
      long next;
      try {
        UserGroupInformation user = UserGroupInformation.loginUserFromKeytabAndReturnUGI(principal, keytab);
        Credentials fresh = new Credentials();
        expires = user.doAs((java.security.PrivilegedExceptionAction<Long>) () ->
            Client.obtainTokens(conf, uris, user.getShortUserName(), fresh, true));
        UserGroupInformation.getCurrentUser().addCredentials(fresh);
        File file = new File("hadoop-tokens-" + n).getAbsoluteFile();
        try (java.io.DataOutputStream out = new java.io.DataOutputStream(new java.io.FileOutputStream(file))) {
          fresh.writeTokenStorageToStream(out);
        }
        String about = Client.describe(fresh) + " until " + java.time.Instant.ofEpochMilli(expires);
        pendingLines.add("tokens\t" + file.getPath() + "\t" + about);
        // Half way to the expiry, and 90 s before it at the latest: the Rust HDFS client takes
        // no token within 60 s of its end, and the driver and executors need a few seconds.
        long left = expires - System.currentTimeMillis();
        next = System.currentTimeMillis() + Math.max(5_000, Math.min(left / 2, left - 90_000));
        System.err.println("renewed HDFS delegation tokens: " + about + "; next at "
            + java.time.Instant.ofEpochMilli(next));
      } catch (Exception e) {
        String why = Client.oneLine(e);
        long lastChance = expires - 80_000;
        if (System.currentTimeMillis() >= lastChance) {
          System.err.println("could not renew the HDFS delegation tokens, which expire at "
              + java.time.Instant.ofEpochMilli(expires) + ": " + why);
          pendingLines.add("renewal-failed\t" + java.time.Instant.ofEpochMilli(expires) + "\t" + why);
          return;
        }
        next = Math.min(System.currentTimeMillis() + 60_000, lastChance);
        System.err.println("could not renew the HDFS delegation tokens (trying again at "
            + java.time.Instant.ofEpochMilli(next) + "): " + why);
      }
      try {
        Thread.sleep(Math.max(0, next - System.currentTimeMillis()));
      } catch (InterruptedException e) {
        return;
      }
    }
  }

  private void allocate(String[] f, PrintWriter out) throws Exception {
    int wanted = Integer.parseInt(f[1]);
    Resource size = Resource.newInstance(Long.parseLong(f[3]), Integer.parseInt(f[2]));
    float progress = Float.parseFloat(f[4]);
    for (String id : f.length > 5 && !f[5].isEmpty() ? f[5].split(",") : new String[0]) {
      Container c = running.remove(id);
      if (c != null) {
        released.add(id);
        rm.releaseAssignedContainer(c.getId());
      }
    }
    int alive = running.size() + pending.size();
    for (; alive < wanted; alive++) {
      ContainerRequest r = new ContainerRequest(size, null, null, priority);
      rm.addContainerRequest(r);
      pending.add(r);
    }
    while (alive > wanted && !pending.isEmpty()) {
      rm.removeContainerRequest(pending.remove(pending.size() - 1));
      alive--;
    }
    AllocateResponse response = rm.allocate(progress);
    // Completed containers first: YARN reports each once, so none may be lost to a container
    // that then fails to start below.
    for (ContainerStatus s : response.getCompletedContainersStatuses()) {
      String id = s.getContainerId().toString();
      boolean ours = running.remove(id) != null;
      if (!ours && released.remove(id)) {
        continue;
      }
      int exit = s.getExitStatus();
      boolean overMemory = exit == ContainerExitStatus.KILLED_EXCEEDED_PMEM
          || exit == ContainerExitStatus.KILLED_EXCEEDED_VMEM;
      out.println("completed\t" + id + "\t" + exit + "\t" + (overMemory ? 1 : 0) + "\t"
          + Client.oneLine(s.getDiagnostics()));
    }
    for (Container c : response.getAllocatedContainers()) {
      String id = c.getId().toString();
      // More than asked for (YARN may place an ask twice while its removal is on the way):
      // given back, and its completion is not an executor's end (the driver never heard of it).
      if (pending.isEmpty()) {
        released.add(id);
        rm.releaseAssignedContainer(c.getId());
        continue;
      }
      try {
        nm.startContainer(c, executorContext(c));
      } catch (Exception e) {
        // One NodeManager that will not start it: give it back; the request stays, so a later
        // allocate places the executor elsewhere.
        System.err.println("cannot start container " + id + ": " + Client.oneLine(e));
        released.add(id);
        rm.releaseAssignedContainer(c.getId());
        continue;
      }
      rm.removeContainerRequest(pending.remove(0));
      running.put(id, c);
      out.println("allocated\t" + id + "\t" + c.getNodeId());
    }
    for (String line; (line = pendingLines.poll()) != null;) {
      out.println(line);
    }
    out.println("end");
  }

  private ContainerLaunchContext executorContext(Container c) throws java.io.IOException {
    String log = ApplicationConstants.LOG_DIR_EXPANSION_VAR;
    String command = "./embedstream executor --driver " + driverUrl + " --executor-id " + c.getId()
        + " --cores " + c.getResource().getVirtualCores() + " --listen "
        + ApplicationConstants.Environment.NM_HOST.$$() + ":0 --token-file secret "
        + (executorArgs.isEmpty() ? "" : executorArgs + " ") + "1>" + log + "/stdout 2>" + log + "/stderr";
    Map<String, String> env = new HashMap<>();
    env.put("EMBEDSTREAM_ORT_LIB", ApplicationConstants.Environment.PWD.$$() + "/libonnxruntime.so");
    env.put("KRB5CCNAME", "FILE:" + ApplicationConstants.Environment.PWD.$$() + "/krb5cc");
    if (executorFiles.containsKey("core-site.xml")) {
      env.put("HADOOP_CONF_DIR", ApplicationConstants.Environment.PWD.$$());
    }
    return ContainerLaunchContext.newInstance(executorFiles, env, List.of(command), null, executorTokens(), null);
  }

  /**
   * What the executors' containers get of this master's tokens (the HDFS delegation tokens the
   * client gave the application): all but the master's own AMRM token. None without Kerberos.
   */
  private ByteBuffer executorTokens() throws java.io.IOException {
    if (!UserGroupInformation.isSecurityEnabled()) {
      return null;
    }
    Credentials mine = UserGroupInformation.getCurrentUser().getCredentials();
    Credentials theirs = new Credentials();
    for (Map.Entry<Text, Token<? extends TokenIdentifier>> t : mine.getTokenMap().entrySet()) {
      if (!t.getValue().getKind().equals(AMRMTokenIdentifier.KIND_NAME)) {
        theirs.addToken(t.getKey(), t.getValue());
      }
    }
    return Client.serialized(theirs);
  }
}
