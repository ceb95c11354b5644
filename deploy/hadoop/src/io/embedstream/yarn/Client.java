// embedstream's YARN client, run by `embedstream submit|status|stop ... --master yarn` (src/yarn.rs)
// with the cluster's configuration (HADOOP_CONF_DIR) on its classpath. It speaks to YARN and HDFS
// through Hadoop's own client libraries, so that it works wherever `yarn` and `hdfs` do.
//
//   Client submit  NAME QUEUE AM_MEMORY_MB MAX_ATTEMPTS NAME=LOCAL_FILE...
//       stages the files in HDFS under ~/.embedstream-staging/APP_ID (mode 0700; `secret`,
//       `kafka-secret-*`, `kafka-private-*` (keytabs, keys) and TLS keys `*-key.pem` 0600),
//       submits the application master, prints `APP_ID` on a line of its own.
//   Client list                prints embedstream's applications, a tab-separated line each:
//                              id, name, state, final status, queue, tracking URL.
//   Client report  APP_ID      prints the application's report as KEY=VALUE lines.
//   Client secret  APP_ID      prints the first line of the application's staged `secret`.
//   Client staged  APP_ID NAME prints a staged file that is no secret (`app-ca.pem`).
//   Client kill    APP_ID      asks YARN to kill the application.
//   Client cleanup APP_ID      removes the staging directory (after an application that ended
//                              without its master cleaning up: killed, or failed to start).
// On a Kerberized cluster (hadoop.security.authentication = kerberos) every command logs in first:
// from the keytab of -Dembedstream.principal/-Dembedstream.keytab when given, else from the
// ticket cache (`kinit`, KRB5CCNAME); with neither it refuses at once, naming Kerberos. `submit`
// then gets HDFS delegation tokens, renewed by the ResourceManager, for the default file system
// and every -Dembedstream.hdfs URI (the job's checkpoint, table, model files; comma-separated),
// and gives them to the master's container. Each token is also named by its NameNode's address
// as the job writes it (Hadoop names it by IP), which is how the driver and executors' HDFS
// client finds it.
// Errors go to standard error, one line, and exit 1. The RM is given a bounded time: the
// connection settings below unless the cluster's configuration sets them.
package io.embedstream.yarn;

import java.io.BufferedReader;
import java.net.URI;
import java.nio.ByteBuffer;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.io.DataOutputBuffer;
import org.apache.hadoop.io.Text;
import org.apache.hadoop.security.Credentials;
import org.apache.hadoop.security.SecurityUtil;
import org.apache.hadoop.security.UserGroupInformation;
import org.apache.hadoop.security.token.Token;
import org.apache.hadoop.security.token.delegation.AbstractDelegationTokenIdentifier;
import org.apache.hadoop.yarn.api.ApplicationConstants;
import org.apache.hadoop.yarn.api.records.ApplicationId;
import org.apache.hadoop.yarn.api.records.ApplicationReport;
import org.apache.hadoop.yarn.api.records.ApplicationSubmissionContext;
import org.apache.hadoop.yarn.api.records.ContainerLaunchContext;
import org.apache.hadoop.yarn.api.records.LocalResource;
import org.apache.hadoop.yarn.api.records.LocalResourceType;
import org.apache.hadoop.yarn.api.records.LocalResourceVisibility;
import org.apache.hadoop.yarn.api.records.Resource;
import org.apache.hadoop.yarn.api.records.URL;
import org.apache.hadoop.yarn.client.api.YarnClient;
import org.apache.hadoop.yarn.client.api.YarnClientApplication;
import org.apache.hadoop.yarn.client.util.YarnClientUtils;
import org.apache.hadoop.yarn.conf.YarnConfiguration;

public final class Client {
  private Client() {}

  /** The application type YARN shows (`yarn application -list -appTypes EMBEDSTREAM`). */
  static final String APP_TYPE = "EMBEDSTREAM";

  public static void main(String[] args) {
    try {
      if (args.length < 1 || (args.length < 2 && !args[0].equals("list"))) {
        throw new IllegalArgumentException("usage: Client submit|list|report|secret|staged|kill|cleanup ...");
      }
      YarnConfiguration conf = new YarnConfiguration();
      // A ResourceManager that does not answer fails the command in seconds, not YARN's 15 minutes.
      if (conf.get("yarn.resourcemanager.connect.max-wait.ms") == null
          || conf.getLong("yarn.resourcemanager.connect.max-wait.ms", 0) == 900_000L) {
        conf.setLong("yarn.resourcemanager.connect.max-wait.ms", Long.getLong("embedstream.rm.wait.ms", 15_000L));
        conf.setLong("yarn.resourcemanager.connect.retry-interval.ms", 1_000L);
      }
      // Each of those tries is one connection attempt (Hadoop's IPC would retry each ten times).
      conf.setInt("ipc.client.connect.max.retries", 0);
      conf.setInt("ipc.client.connect.max.retries.on.timeouts", 0);
      conf.setInt("ipc.client.connect.timeout", 3_000);
      login(conf);
      switch (args[0]) {
        case "submit":
          submit(conf, args);
          break;
        case "list":
          withYarn(conf, yarn -> {
            for (ApplicationReport r : yarn.getApplications(java.util.Set.of(APP_TYPE))) {
              System.out.println(String.join("\t", r.getApplicationId().toString(), r.getName(),
                  r.getYarnApplicationState().toString(), r.getFinalApplicationStatus().toString(), r.getQueue(),
                  r.getOriginalTrackingUrl() == null ? "" : r.getOriginalTrackingUrl()));
            }
          });
          break;
        case "report":
          report(conf, ApplicationId.fromString(args[1]));
          break;
        case "secret":
          secret(conf, ApplicationId.fromString(args[1]));
          break;
        case "staged":
          staged(conf, ApplicationId.fromString(args[1]), args[2]);
          break;
        case "kill":
          withYarn(conf, yarn -> yarn.killApplication(ApplicationId.fromString(args[1])));
          break;
        case "cleanup":
          FileSystem.get(conf).delete(stagingDir(conf, ApplicationId.fromString(args[1])), true);
          break;
        default:
          throw new IllegalArgumentException("unknown command " + args[0]);
      }
      System.exit(0);
    } catch (Throwable t) {
      System.err.println(oneLine(t));
      System.exit(1);
    }
  }

  /** ~/.embedstream-staging/APP_ID in the cluster's default file system. */
  static Path stagingDir(YarnConfiguration conf, ApplicationId app) throws java.io.IOException {
    FileSystem fs = FileSystem.get(conf);
    return new Path(fs.getHomeDirectory(), ".embedstream-staging/" + app);
  }

  interface YarnCall {
    void call(YarnClient yarn) throws Exception;
  }

  static void withYarn(YarnConfiguration conf, YarnCall call) throws Exception {
    YarnClient yarn = YarnClient.createYarnClient();
    yarn.init(conf);
    yarn.start();
    try {
      call.call(yarn);
    } finally {
      yarn.stop();
    }
  }

  private static void submit(YarnConfiguration conf, String[] args) throws Exception {
    String name = args[1];
    String queue = args[2];
    int amMemory = Integer.parseInt(args[3]);
    int maxAttempts = Integer.parseInt(args[4]);
    Map<String, String> files = new HashMap<>();
    for (int i = 5; i < args.length; i++) {
      int eq = args[i].indexOf('=');
      files.put(args[i].substring(0, eq), args[i].substring(eq + 1));
    }
    withYarn(conf, yarn -> {
      YarnClientApplication app = yarn.createApplication();
      ApplicationSubmissionContext context = app.getApplicationSubmissionContext();
      ApplicationId id = context.getApplicationId();
      FileSystem fs = FileSystem.get(conf);
      Path staging = stagingDir(conf, id);
      FileSystem.mkdirs(fs, staging, new FsPermission((short) 0700));
      Map<String, LocalResource> resources = new HashMap<>();
      try {
        for (Map.Entry<String, String> f : files.entrySet()) {
          Path dst = new Path(staging, f.getKey());
          fs.copyFromLocalFile(false, true, new Path(f.getValue()), dst);
          if (f.getKey().equals(USER_KEYTAB)) {
            fs.setPermission(dst, new FsPermission((short) 0400));
          } else if (isPrivate(f.getKey())) {
            fs.setPermission(dst, new FsPermission((short) 0600));
          }
          resources.put(f.getKey(), localResource(fs, dst));
        }
        Map<String, String> env = new HashMap<>();
        env.put("CLASSPATH", classpath(conf));
        env.put(ApplicationMaster.STAGING_ENV, fs.makeQualified(staging).toString());
        int clusterMax = conf.getInt(YarnConfiguration.RM_AM_MAX_ATTEMPTS, YarnConfiguration.DEFAULT_RM_AM_MAX_ATTEMPTS);
        int attempts = maxAttempts > 0 ? Math.min(maxAttempts, clusterMax) : clusterMax;
        env.put(ApplicationMaster.MAX_ATTEMPTS_ENV, String.valueOf(attempts));
        if (files.containsKey(USER_KEYTAB)) {
          env.put(PRINCIPAL_ENV, System.getProperty("embedstream.principal", ""));
          env.put(HDFS_ENV, System.getProperty("embedstream.hdfs", ""));
        }
        String command = ApplicationConstants.Environment.JAVA_HOME.$$() + "/bin/java -Xmx128m "
            + ApplicationMaster.class.getName() + " 1>" + ApplicationConstants.LOG_DIR_EXPANSION_VAR
            + "/stdout 2>" + ApplicationConstants.LOG_DIR_EXPANSION_VAR + "/stderr";
        ContainerLaunchContext am =
            ContainerLaunchContext.newInstance(resources, env, List.of(command), null, delegationTokens(conf), null);
        context.setApplicationName(name);
        context.setApplicationType(APP_TYPE);
        context.setQueue(queue);
        context.setAMContainerSpec(am);
        context.setResource(Resource.newInstance(amMemory, 1));
        context.setMaxAppAttempts(attempts);
        yarn.submitApplication(context);
      } catch (Exception e) {
        fs.delete(staging, true);
        throw e;
      }
      System.out.println(id);
    });
  }

  static LocalResource localResource(FileSystem fs, Path path) throws java.io.IOException {
    FileStatus st = fs.getFileStatus(path);
    return LocalResource.newInstance(URL.fromPath(fs.makeQualified(path)), LocalResourceType.FILE,
        LocalResourceVisibility.APPLICATION, st.getLen(), st.getModificationTime());
  }

  /** The master's classpath: its jar from the working directory, then the cluster's own. */
  private static String classpath(YarnConfiguration conf) {
    List<String> parts = new ArrayList<>();
    parts.add(ApplicationConstants.Environment.PWD.$$() + "/embedstream-yarn.jar");
    for (String c : conf.getStrings(YarnConfiguration.YARN_APPLICATION_CLASSPATH,
        YarnConfiguration.DEFAULT_YARN_CROSS_PLATFORM_APPLICATION_CLASSPATH)) {
      parts.add(c.trim());
    }
    return String.join(ApplicationConstants.CLASS_PATH_SEPARATOR, parts);
  }

  private static void report(YarnConfiguration conf, ApplicationId id) throws Exception {
    withYarn(conf, yarn -> {
      ApplicationReport r = yarn.getApplicationReport(id);
      System.out.println("state=" + r.getYarnApplicationState());
      System.out.println("final_status=" + r.getFinalApplicationStatus());
      System.out.println("host=" + (r.getHost() == null ? "" : r.getHost()));
      System.out.println("rpc_port=" + r.getRpcPort());
      System.out.println("tracking_url=" + (r.getOriginalTrackingUrl() == null ? "" : r.getOriginalTrackingUrl()));
      System.out.println("attempt=" + (r.getCurrentApplicationAttemptId() == null ? 0
          : r.getCurrentApplicationAttemptId().getAttemptId()));
      System.out.println("name=" + r.getName());
      System.out.println("queue=" + r.getQueue());
      System.out.println("diagnostics=" + oneLine(r.getDiagnostics()));
    });
  }

  private static void secret(YarnConfiguration conf, ApplicationId id) throws Exception {
    FileSystem fs = FileSystem.get(conf);
    try (BufferedReader in = new BufferedReader(
        new InputStreamReader(fs.open(new Path(stagingDir(conf, id), "secret")), StandardCharsets.UTF_8))) {
      System.out.println(in.readLine());
    }
  }

  /**
   * Kerberos, where the cluster has it: logs in from the keytab given, else takes the ticket
   * cache's login; refuses without a ticket, before anything is called or written.
   */
  static void login(YarnConfiguration conf) throws Exception {
    UserGroupInformation.setConfiguration(conf);
    if (!UserGroupInformation.isSecurityEnabled()) {
      return;
    }
    String principal = System.getProperty("embedstream.principal", "");
    if (!principal.isEmpty()) {
      UserGroupInformation.loginUserFromKeytab(principal, System.getProperty("embedstream.keytab", ""));
    }
    UserGroupInformation user = UserGroupInformation.getLoginUser();
    if (!user.hasKerberosCredentials()) {
      throw new IllegalStateException("Kerberos: the cluster requires it (hadoop.security.authentication = kerberos)"
          + " and " + user.getUserName() + " has no ticket: pass --principal and --keytab, or run kinit first");
    }
  }

  /** The staged name of the user's keytab (submit --keytab): the master's only. */
  static final String USER_KEYTAB = "user.keytab";
  /** The master's environment: the keytab's principal, and the job's HDFS URIs. */
  static final String PRINCIPAL_ENV = "EMBEDSTREAM_PRINCIPAL";
  static final String HDFS_ENV = "EMBEDSTREAM_HDFS";

  /**
   * The application's HDFS delegation tokens (none without Kerberos), renewable by the
   * ResourceManager, which renews them while the application runs.
   */
  private static ByteBuffer delegationTokens(YarnConfiguration conf) throws Exception {
    if (!UserGroupInformation.isSecurityEnabled()) {
      return null;
    }
    Credentials creds = new Credentials();
    List<String> uris = hdfsUris(conf, System.getProperty("embedstream.hdfs", ""));
    obtainTokens(conf, uris, YarnClientUtils.getRmPrincipal(conf), creds, false);
    return serialized(creds);
  }

  /** `creds` as a container's launch context carries them. */
  static ByteBuffer serialized(Credentials creds) throws java.io.IOException {
    DataOutputBuffer out = new DataOutputBuffer();
    creds.writeTokenStorageToStream(out);
    return ByteBuffer.wrap(out.getData(), 0, out.getLength());
  }

  /** The default file system, then each of `list` (comma-separated). */
  static List<String> hdfsUris(YarnConfiguration conf, String list) {
    List<String> uris = new ArrayList<>();
    uris.add(FileSystem.getDefaultUri(conf).toString());
    for (String u : list.split(",")) {
      if (!u.isEmpty()) {
        uris.add(u);
      }
    }
    return uris;
  }

  /**
   * Adds a delegation token of each file system of `uris` to `creds`, for `renewer`, each also
   * named as the URI writes its NameNode. With `renew` (the renewer being the caller), renews
   * each once and returns the earliest time one expires (its renewal or its max lifetime).
   */
  static long obtainTokens(YarnConfiguration conf, List<String> uris, String renewer, Credentials creds,
      boolean renew) throws Exception {
    for (String u : uris) {
      FileSystem fs = new Path(u).getFileSystem(conf);
      fs.addDelegationTokens(renewer, creds);
      alias(creds, fs.getUri());
    }
    long earliest = Long.MAX_VALUE;
    if (renew) {
      java.util.Set<String> seen = new java.util.HashSet<>();
      for (Token<?> t : creds.getAllTokens()) {
        if (seen.add(java.util.Base64.getEncoder().encodeToString(t.getIdentifier()))) {
          long expires = t.renew(conf);
          if (t.decodeIdentifier() instanceof AbstractDelegationTokenIdentifier id) {
            expires = Math.min(expires, id.getMaxDate());
          }
          earliest = Math.min(earliest, expires);
        }
      }
    }
    return earliest;
  }

  /** The tokens' kinds and sequence numbers, once each (the log's account of a renewal). */
  /** The earliest max date of `creds`' delegation tokens (Long.MAX_VALUE without any). */
  static long earliestMaxDate(Credentials creds) throws java.io.IOException {
    long earliest = Long.MAX_VALUE;
    for (Token<?> t : creds.getAllTokens()) {
      if (t.decodeIdentifier() instanceof AbstractDelegationTokenIdentifier id && id.getMaxDate() > 0) {
        earliest = Math.min(earliest, id.getMaxDate());
      }
    }
    return earliest;
  }

  static String describe(Credentials creds) throws java.io.IOException {
    java.util.Set<String> out = new java.util.TreeSet<>();
    for (Token<?> t : creds.getAllTokens()) {
      String number = t.decodeIdentifier() instanceof AbstractDelegationTokenIdentifier id
          ? "#" + id.getSequenceNumber() : "";
      out.add(t.getKind() + number);
    }
    return String.join(", ", out);
  }

  /**
   * Names the tokens of the NameNode at `uri` also by `uri`'s HOST:PORT as written: Hadoop names
   * them by IP; the Rust HDFS client looks them up by the URL's text. (An HA name service's
   * tokens are named by it, `ha-hdfs:NAMESERVICE`, in both.)
   */
  private static void alias(Credentials creds, URI uri) {
    if (uri.getPort() < 0) {
      return;
    }
    Text byIp = SecurityUtil.buildTokenService(uri);
    Text asWritten = new Text(uri.getHost() + ":" + uri.getPort());
    if (byIp.equals(asWritten)) {
      return;
    }
    for (Token<?> t : new ArrayList<>(creds.getAllTokens())) {
      if (t.getService().equals(byIp)) {
        Token<?> copy = new Token<>(t);
        copy.setService(asWritten);
        creds.addToken(asWritten, copy);
      }
    }
  }

  /** Staged files only the application's user may read. */
  static boolean isPrivate(String name) {
    return name.equals("secret") || name.startsWith("kafka-secret-") || name.startsWith("kafka-private-")
        || name.endsWith("-key.pem");
  }

  private static void staged(YarnConfiguration conf, ApplicationId id, String name) throws Exception {
    if (isPrivate(name)) {
      throw new IllegalArgumentException(name + " is a secret: `staged` prints no secret");
    }
    FileSystem fs = FileSystem.get(conf);
    try (java.io.InputStream in = fs.open(new Path(stagingDir(conf, id), name))) {
      in.transferTo(System.out);
    }
    System.out.flush();
  }

  static String oneLine(Object o) {
    if (o instanceof Throwable) {
      Throwable t = (Throwable) o;
      StringBuilder s = new StringBuilder();
      for (Throwable c = t; c != null; c = c.getCause() == c ? null : c.getCause()) {
        String message = c.getMessage() == null ? c.getClass().getSimpleName() : c.getMessage();
        // Hadoop's wrappers repeat their cause's message: say it once.
        if (s.indexOf(message) >= 0) {
          continue;
        }
        if (s.length() > 0) {
          s.append(": ");
        }
        s.append(message);
      }
      o = s;
    }
    return o == null ? "" : o.toString().replace('\n', ' ').replace('\r', ' ').replace('\t', ' ');
  }
}
