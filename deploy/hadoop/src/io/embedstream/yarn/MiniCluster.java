// Test support: Hadoop's own mini cluster (a ResourceManager, two NodeManagers that launch real
// processes, a NameNode and a DataNode) in this one JVM, on loopback, for tests/yarn.rs.
//
//   java -cp "$EMBEDSTREAM_CACHE/hadoop/libs/*:embedstream-yarn.jar" io.embedstream.yarn.MiniCluster \
//        DIR APP_CLASSPATH [PRINCIPAL KEYTAB HTTP_KEYTAB KRB5_CONF USER]
//
// With the last five, the cluster is Kerberized (hadoop.security.authentication = kerberos), as a
// production one: every server logs in as PRINCIPAL (`service/localhost@REALM`; Hadoop allows
// one login user per JVM, so HDFS and YARN share it), the NameNode's web endpoint as
// HTTP/localhost@REALM from HTTP_KEYTAB, block access tokens; USER (the test's user principal's short name) gets /user/USER, and
// /checkpoints and /tables are open to all. The JVM needs -Djava.security.krb5.conf=KRB5_CONF
// (Java ignores KRB5_CONFIG); containers get it through yarn.nodemanager.admin-env.
//
// Writes DIR/conf/{core-site,yarn-site}.xml (what HADOOP_CONF_DIR points a client at), then
// DIR/ready, and runs until its standard input closes (the test that started it ended) or it is
// sent SIGTERM; then it stops the cluster, deletes DIR and exits. APP_CLASSPATH becomes
// yarn.application.classpath: what an ApplicationMaster's container gets, as on a real cluster.
package io.embedstream.yarn;

import java.io.File;
import java.io.FileOutputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.security.UserGroupInformation;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.apache.hadoop.yarn.conf.YarnConfiguration;
import org.apache.hadoop.yarn.server.MiniYARNCluster;

public final class MiniCluster {
  private MiniCluster() {}

  public static void main(String[] args) throws Exception {
    if (args.length != 2 && args.length != 7) {
      System.err.println("usage: MiniCluster DIR APP_CLASSPATH [PRINCIPAL KEYTAB HTTP_KEYTAB KRB5_CONF USER]");
      System.exit(2);
    }
    boolean secure = args.length == 7;
    File dir = new File(args[0]).getAbsoluteFile();
    File confDir = new File(dir, "conf");
    if (!confDir.mkdirs() && !confDir.isDirectory()) {
      throw new IllegalStateException("cannot make " + confDir);
    }
    YarnConfiguration conf = new YarnConfiguration();
    conf.set("hadoop.tmp.dir", new File(dir, "tmp").getPath());
    // Everything on loopback.
    conf.set("dfs.namenode.rpc-bind-host", "127.0.0.1");
    conf.set("yarn.resourcemanager.hostname", "127.0.0.1");
    conf.set("yarn.nodemanager.hostname", "127.0.0.1");
    // As on a real cluster, masters find the cluster's configuration on their classpath.
    conf.set("yarn.application.classpath", confDir.getPath() + "," + args[1]);
    // Two attempts, so a killed master is restarted (what the test of a master restart needs).
    conf.setInt("yarn.resourcemanager.am.max-attempts", 2);
    // Small containers, each NodeManager with room for the master and one executor or two
    // executors, so that executors spread over both.
    conf.setInt("yarn.scheduler.minimum-allocation-mb", 64);
    // The Kerberized cluster's tests run two applications side by side (a renewal that works,
    // one that fails): a NodeManager there has room for a third container.
    int nodeMemory = secure ? 3072 : 2048;
    conf.setInt("yarn.nodemanager.resource.memory-mb", nodeMemory);
    conf.setInt("yarn.minicluster.yarn.nodemanager.resource.memory-mb", nodeMemory);
    conf.setInt("yarn.nodemanager.resource.cpu-vcores", 4);
    conf.setInt("yarn.scheduler.maximum-allocation-mb", 2048);
    // The Capacity Scheduler with one queue, `default`, that may give all of the cluster to
    // masters (the default, a tenth, would not start a second application's master).
    conf.set("yarn.scheduler.capacity.root.queues", "default");
    conf.set("yarn.scheduler.capacity.root.default.capacity", "100");
    conf.set("yarn.scheduler.capacity.root.default.maximum-capacity", "100");
    conf.set("yarn.scheduler.capacity.maximum-am-resource-percent", "1.0");
    // YARN's own memory check, on physical memory only, every half second.
    // (The mini cluster turns the monitor off unless told that the test controls it.)
    conf.setBoolean("yarn.minicluster.control-resource-monitoring", true);
    conf.setBoolean("yarn.nodemanager.container-monitor.enabled", true);
    conf.setBoolean("yarn.nodemanager.pmem-check-enabled", true);
    conf.setBoolean("yarn.nodemanager.vmem-check-enabled", false);
    // Without cgroups, `memory.enforced` (true by default) leaves the kill to a cgroup's OOM
    // killer that is not there; false makes the NodeManager's polling check kill.
    conf.setBoolean("yarn.nodemanager.resource.memory.enforced", false);
    conf.setInt("yarn.nodemanager.container-monitor.interval-ms", 500);
    conf.setInt("yarn.nodemanager.resource-monitor.interval-ms", 500);
    // A lost NodeManager's containers are reported within seconds, not ten minutes.
    conf.setInt("yarn.nm.liveness-monitor.expiry-interval-ms", 10_000);
    conf.setInt("yarn.resourcemanager.nm-liveness-monitor.interval-ms", 1_000);
    // An application's localized files (the staged binary, hundreds of MB in a debug build)
    // go when it ends; its container logs stay (yarn.nodemanager.log.retain-seconds).
    conf.setLong("yarn.nodemanager.delete.debug-delay-sec", 0);
    // The test machine's disk may be fuller than YARN's default 90%.
    conf.setFloat("yarn.nodemanager.disk-health-checker.max-disk-utilization-per-disk-percentage", 99.5f);

    if (secure) {
      kerberize(conf, args[2], args[3], args[4], args[5]);
    }

    MiniDFSCluster dfs = new MiniDFSCluster.Builder(conf, new File(dir, "dfs")).numDataNodes(1).build();
    dfs.waitActive();
    if (secure) {
      org.apache.hadoop.fs.FileSystem fs = dfs.getFileSystem();
      Path home = new Path("/user/" + args[6]);
      fs.mkdirs(home);
      fs.setOwner(home, args[6], null);
      for (String open : new String[] {"/checkpoints", "/tables"}) {
        fs.mkdirs(new Path(open));
        fs.setPermission(new Path(open), new FsPermission((short) 0777));
      }
      // Other principals a test makes get their home by making it (sticky, as /tmp).
      fs.setPermission(new Path("/user"), new FsPermission((short) 01777));
    }
    conf.set("fs.defaultFS", dfs.getURI().toString());
    MiniYARNCluster yarn = new MiniYARNCluster("embedstream", 2, 1, 1);
    Runnable stop = () -> {
      try {
        yarn.stop();
      } catch (RuntimeException e) {
        System.err.println("MiniCluster: stopping YARN: " + e);
      }
      dfs.shutdown();
      // The directory is the test's: it holds HDFS's blocks and the NodeManagers' files.
      org.apache.hadoop.fs.FileUtil.fullyDelete(dir);
    };
    try {
      yarn.init(conf);
      yarn.start();
      waitForNodeManagers(yarn, 2);
      Configuration all = yarn.getConfig();
      write(all, new File(confDir, "yarn-site.xml"));
      Configuration core = new Configuration(false);
      core.set("fs.defaultFS", dfs.getURI().toString());
      if (secure) {
        for (String key : new String[] {"hadoop.security.authentication", "hadoop.security.authorization"}) {
          core.set(key, conf.get(key));
        }
        Configuration hdfs = new Configuration(false);
        for (String key : new String[] {"dfs.namenode.kerberos.principal", "dfs.datanode.kerberos.principal",
            "dfs.block.access.token.enable"}) {
          hdfs.set(key, conf.get(key));
        }
        write(hdfs, new File(confDir, "hdfs-site.xml"));
      }
      write(core, new File(confDir, "core-site.xml"));
      String ready = "{\"rm\": \"" + all.get(YarnConfiguration.RM_ADDRESS) + "\", \"hdfs\": \"" + dfs.getURI()
          + "\", \"rm_web\": \"" + all.get(YarnConfiguration.RM_WEBAPP_ADDRESS) + "\", \"datanode_port\": "
          + dfs.getDataNodes().get(0).getXferPort() + "}\n";
      File tmp = new File(dir, "ready.tmp");
      Files.writeString(tmp.toPath(), ready, StandardCharsets.UTF_8);
      Files.move(tmp.toPath(), new File(dir, "ready").toPath(), StandardCopyOption.ATOMIC_MOVE);
      System.err.println("MiniCluster: ready " + ready.trim());
      Runtime.getRuntime().addShutdownHook(new Thread(stop));
      while (System.in.read() != -1) {
        // The test holds our standard input open for as long as it wants the cluster.
      }
    } catch (Throwable t) {
      t.printStackTrace();
      stop.run();
      Runtime.getRuntime().halt(1);
    }
    // HDFS leaves threads that are not daemons: exit, running the hook that stops the cluster.
    System.exit(0);
  }

  /** Kerberos for every server of the cluster, as a production cluster has it. */
  private static void kerberize(YarnConfiguration conf, String principal, String keytab, String httpKeytab,
      String krb5) throws java.io.IOException {
    String realm = principal.substring(principal.indexOf('@') + 1);
    conf.set("hadoop.security.authentication", "kerberos");
    conf.set("hadoop.security.authorization", "true");
    conf.set("dfs.namenode.kerberos.principal", principal);
    conf.set("dfs.namenode.keytab.file", keytab);
    conf.set("dfs.datanode.kerberos.principal", principal);
    conf.set("dfs.datanode.keytab.file", keytab);
    conf.set("dfs.web.authentication.kerberos.principal", "HTTP/localhost@" + realm);
    conf.set("dfs.web.authentication.kerberos.keytab", httpKeytab);
    conf.setBoolean("dfs.block.access.token.enable", true);
    // Delegation tokens that live three minutes, not a week: a test sees a query outlive them.
    conf.setLong("dfs.namenode.delegation.token.renew-interval", 180_000L);
    conf.setLong("dfs.namenode.delegation.token.max-lifetime", 180_000L);
    // A secure DataNode wants privileged ports, or SASL on data transfer with HTTPS; a test on
    // loopback has neither. (SASL on data transfer is not set: the mini cluster's NodeManagers
    // localize with a configuration of their own that does not take it, and their reads fail.)
    conf.setBoolean("ignore.secure.ports.for.testing", true);
    conf.set("yarn.resourcemanager.principal", principal);
    conf.set("yarn.resourcemanager.keytab", keytab);
    conf.set("yarn.nodemanager.principal", principal);
    conf.set("yarn.nodemanager.keytab", keytab);
    // Java ignores KRB5_CONFIG: containers' JVMs (the master) get the realm's file this way.
    conf.set("yarn.nodemanager.admin-env", "MALLOC_ARENA_MAX=$MALLOC_ARENA_MAX,KRB5_CONFIG=" + krb5
        + ",JAVA_TOOL_OPTIONS=-Djava.security.krb5.conf=" + krb5);
    conf.set("yarn.nodemanager.container-localizer.java.opts", "-Xmx256m -Djava.security.krb5.conf=" + krb5);
    UserGroupInformation.setConfiguration(conf);
    // MiniYARNCluster does not log its servers in: one login for the JVM, as their principal.
    UserGroupInformation.loginUserFromKeytab(principal, keytab);
  }

  private static void waitForNodeManagers(MiniYARNCluster yarn, int wanted) throws InterruptedException {
    long deadline = System.currentTimeMillis() + 60_000;
    while (yarn.getResourceManager().getRMContext().getRMNodes().size() < wanted) {
      if (System.currentTimeMillis() > deadline) {
        throw new IllegalStateException("the NodeManagers did not register within 60 s");
      }
      Thread.sleep(100);
    }
  }

  private static void write(Configuration conf, File file) throws Exception {
    try (OutputStream out = new FileOutputStream(file)) {
      conf.writeXml(out);
    }
  }
}
