#!/usr/bin/env python3
"""The CloudFormation template of a whole slipway setup, as a Python
definition; it writes init/aws/slipway.yaml (Python standard library only).

    init/aws/template.py            rewrite init/aws/slipway.yaml
    init/aws/template.py --check    exit 1 when slipway.yaml is not what this writes
    init/aws/template.py --json     print the template as JSON (aws cloudformation
                                    accepts either form)

Why a generator: the template is YAML for the people who read and deploy it,
but Python's standard library has no YAML parser, and the structure tests
(tests/integration/test_cfn.py) must run without third-party packages. So the
template is built here as plain dicts (intrinsic functions in their JSON form:
{"Ref": ...}, {"Fn::Sub": ...}), checked as such, and written by a small
deterministic emitter into a YAML subset: block mappings and sequences,
double-quoted (JSON-escaped) strings, literal blocks for multi-line strings,
and the short-form tags (!Ref, !Sub, !GetAtt, ...) only in front of a scalar.
The test re-reads slipway.yaml with a loader for exactly that subset and
requires it to equal build(), so what was checked is what is deployed. The
agents' cloud-init user data is init/cloud-init/agent.yaml itself, with its
EDIT lines filled from the stack (and every "${" of its scripts escaped for
Fn::Sub).
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, "..", ".."))
AGENT_USER_DATA = os.path.join(TOP, "init", "cloud-init", "agent.yaml")
OUTPUT = os.path.join(HERE, "slipway.yaml")

AZ_COUNT = 3
MAX_APPS = 5             # app log groups and repositories the stack itself creates
HOOK_NAME = "slipway-drain"
LOG_PREFIX = "/slipway/"
REPO_PREFIX = "slipway/"
QUEUE_PREFIX = "slipway-"
AGENT_PORT = 80          # the proxy's listener the load balancer sends traffic to
COORD_PORT = 8700
HEALTH_PATH = "/_slipway/health"


# ---- intrinsic functions (JSON form) ----

def Ref(name):
    return {"Ref": name}


def GetAtt(resource, attr):
    return {"Fn::GetAtt": [resource, attr]}


def Sub(text, variables=None):
    return {"Fn::Sub": text if variables is None else [text, variables]}


def Select(i, lst):
    return {"Fn::Select": [i, lst]}


def If(cond, a, b):
    return {"Fn::If": [cond, a, b]}


def Equals(a, b):
    return {"Fn::Equals": [a, b]}


def Not(c):
    return {"Fn::Not": [c]}


def Base64(v):
    return {"Fn::Base64": v}


def GetAZs():
    return {"Fn::GetAZs": ""}


def Cidr(block, count, bits):
    return {"Fn::Cidr": [block, count, bits]}


def Split(sep, s):
    return {"Fn::Split": [sep, s]}


NO_VALUE = Ref("AWS::NoValue")


def tags(name, **extra):
    out = [{"Key": "Name", "Value": Sub("${AWS::StackName}-" + name)}]
    for k, v in extra.items():
        out.append({"Key": k, "Value": v})
    return out


def arn(service, resource, region=True, account=True):
    """An ARN in this stack's partition, region and account."""
    return Sub("arn:${AWS::Partition}:%s:%s:%s:%s" % (
        service, "${AWS::Region}" if region else "", "${AWS::AccountId}" if account else "",
        resource))


def escape_sub(text):
    """Makes text literal inside Fn::Sub: "${x}" becomes "${!x}"."""
    return text.replace("${", "${!")


# ---- the stack ----

RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827,
                  2192, 2557, 2922, 3288, 3653]


def parameters():
    return {
        "AgentAmiId": {
            "Type": "AWS::EC2::Image::Id",
            "Description": "The agent AMI baked by init/packer/agent.pkr.hcl (Debian 12, "
                           "Docker, slipway-agent installed, not started)"},
        "AgentInstanceType": {
            "Type": "String", "Default": "t3.medium",
            "Description": "Instance type of the agents"},
        "AgentMinSize": {"Type": "Number", "Default": 2, "MinValue": 0,
                         "Description": "Fewest agent instances"},
        "AgentMaxSize": {"Type": "Number", "Default": 12, "MinValue": 1,
                         "Description": "Most agent instances"},
        "AgentDesiredCapacity": {"Type": "Number", "Default": 3, "MinValue": 0,
                                 "Description": "Agent instances at creation"},
        "RootVolumeSize": {"Type": "Number", "Default": 40, "MinValue": 8, "MaxValue": 16384,
                           "Description": "Root volume of each agent in GiB (images, "
                                          "container logs, the log spool)"},
        "MetadataHopLimit": {
            "Type": "Number", "Default": 1, "AllowedValues": [1, 2],
            "Description": "IMDSv2 response hop limit. 1 keeps every container away from the "
                           "instance metadata (with the agent's iptables rule as a second "
                           "wall); 2 is needed only when a service sets metadata_access: true"},
        "Fleet": {"Type": "String", "Default": "default",
                  "AllowedPattern": "[a-z][a-z0-9-]{0,39}",
                  "Description": "Fleet name the agents register under"},
        "CoordinatorAmiId": {
            "Type": "AWS::EC2::Image::Id",
            "Description": "AMI with slipway-coordinator, git and Docker installed (the "
                           "coordinator's unit is init/systemd/slipway-coordinator.service)"},
        "CoordinatorInstanceType": {"Type": "String", "Default": "t3.large",
                                    "Description": "Instance type of the coordinator (it "
                                                   "also runs the builds)"},
        "CoordinatorVolumeSize": {"Type": "Number", "Default": 100, "MinValue": 10,
                                  "MaxValue": 16384,
                                  "Description": "The coordinator's data volume in GiB "
                                                 "(store, git mirrors, build workspaces)"},
        "CertificateArn": {
            "Type": "String", "AllowedPattern": "arn:aws[a-z-]*:acm:.+",
            "Description": "ACM certificate of the load balancer's HTTPS listeners (the apps' "
                           "host names and the coordinator's)"},
        "AllowedCidr": {"Type": "String", "Default": "0.0.0.0/0",
                        "AllowedPattern": r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}",
                        "Description": "Who may reach the apps (ports 80 and 443)"},
        "CoordinatorAllowedCidr": {
            "Type": "String", "Default": "0.0.0.0/0",
            "AllowedPattern": r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}",
            "Description": "Who may reach the coordinator's API on port 8443: GitLab's "
                           "webhooks and the slipway CLI"},
        "VpcCidr": {"Type": "String", "Default": "10.40.0.0/16",
                    "AllowedPattern": r"\d{1,3}(\.\d{1,3}){3}/(1[6-9]|2[0-2])",
                    "Description": "Address range of the VPC (/16 to /22), cut into 6 subnets"},
        "DeregistrationDelaySeconds": {
            "Type": "Number", "Default": 30, "MinValue": 0, "MaxValue": 3600,
            "Description": "How long the load balancer lets requests to a leaving instance "
                           "finish; the agents wait as long after turning unhealthy"},
        "DrainTimeoutSeconds": {
            "Type": "Number", "Default": 900, "MinValue": 30, "MaxValue": 7200,
            "Description": "Heartbeat timeout of the termination lifecycle hook: the agent "
                           "completes the action sooner, and records heartbeats while it "
                           "drains"},
        "LogRetentionDays": {"Type": "Number", "Default": 30, "AllowedValues": RETENTION_DAYS,
                             "Description": "Retention of the apps' log groups"},
        "Apps": {"Type": "String", "Default": "",
                 "AllowedPattern": r"([a-z][a-z0-9-]{0,39}(,[a-z][a-z0-9-]{0,39}){0,4})?",
                 "Description": "Up to %d app names (comma-separated) whose log group and "
                                "image repository this stack manages; other apps get theirs "
                                "from the agents and the coordinator on first use" % MAX_APPS},
    }


def conditions():
    out = {}
    for i in range(MAX_APPS):
        out["HasApp%d" % i] = Not(Equals(app_name(i), ""))
    return out


def app_name(i):
    # "web,api" + ",,,,," so that every index exists; an empty one is no app.
    return Select(i, Split(",", Sub("${Apps}" + "," * MAX_APPS)))


def network(r):
    r["Vpc"] = {"Type": "AWS::EC2::VPC", "Properties": {
        "CidrBlock": Ref("VpcCidr"), "EnableDnsSupport": True, "EnableDnsHostnames": True,
        "Tags": tags("vpc")}}
    r["InternetGateway"] = {"Type": "AWS::EC2::InternetGateway",
                            "Properties": {"Tags": tags("igw")}}
    r["GatewayAttachment"] = {"Type": "AWS::EC2::VPCGatewayAttachment", "Properties": {
        "VpcId": Ref("Vpc"), "InternetGatewayId": Ref("InternetGateway")}}
    r["PublicRouteTable"] = {"Type": "AWS::EC2::RouteTable", "Properties": {
        "VpcId": Ref("Vpc"), "Tags": tags("public")}}
    r["PublicDefaultRoute"] = {"Type": "AWS::EC2::Route", "DependsOn": "GatewayAttachment",
                               "Properties": {
                                   "RouteTableId": Ref("PublicRouteTable"),
                                   "DestinationCidrBlock": "0.0.0.0/0",
                                   "GatewayId": Ref("InternetGateway")}}
    subnets = Cidr(Ref("VpcCidr"), 2 * AZ_COUNT, 12)
    for i in range(AZ_COUNT):
        az = Select(i, GetAZs())
        r["PublicSubnet%d" % i] = {"Type": "AWS::EC2::Subnet", "Properties": {
            "VpcId": Ref("Vpc"), "AvailabilityZone": az, "CidrBlock": Select(i, subnets),
            "MapPublicIpOnLaunch": False, "Tags": tags("public-%d" % i)}}
        r["PrivateSubnet%d" % i] = {"Type": "AWS::EC2::Subnet", "Properties": {
            "VpcId": Ref("Vpc"), "AvailabilityZone": az,
            "CidrBlock": Select(AZ_COUNT + i, subnets), "MapPublicIpOnLaunch": False,
            "Tags": tags("private-%d" % i)}}
        r["PublicSubnet%dRoutes" % i] = {
            "Type": "AWS::EC2::SubnetRouteTableAssociation", "Properties": {
                "SubnetId": Ref("PublicSubnet%d" % i), "RouteTableId": Ref("PublicRouteTable")}}
        # One NAT gateway per zone: losing a zone does not cut the others off
        # from ECR, CloudWatch, SQS and STS.
        r["NatAddress%d" % i] = {"Type": "AWS::EC2::EIP", "DependsOn": "GatewayAttachment",
                                 "Properties": {"Domain": "vpc", "Tags": tags("nat-%d" % i)}}
        r["NatGateway%d" % i] = {"Type": "AWS::EC2::NatGateway", "Properties": {
            "AllocationId": GetAtt("NatAddress%d" % i, "AllocationId"),
            "SubnetId": Ref("PublicSubnet%d" % i), "Tags": tags("nat-%d" % i)}}
        r["PrivateRouteTable%d" % i] = {"Type": "AWS::EC2::RouteTable", "Properties": {
            "VpcId": Ref("Vpc"), "Tags": tags("private-%d" % i)}}
        r["PrivateDefaultRoute%d" % i] = {"Type": "AWS::EC2::Route", "Properties": {
            "RouteTableId": Ref("PrivateRouteTable%d" % i), "DestinationCidrBlock": "0.0.0.0/0",
            "NatGatewayId": Ref("NatGateway%d" % i)}}
        r["PrivateSubnet%dRoutes" % i] = {
            "Type": "AWS::EC2::SubnetRouteTableAssociation", "Properties": {
                "SubnetId": Ref("PrivateSubnet%d" % i),
                "RouteTableId": Ref("PrivateRouteTable%d" % i)}}


def ingress(port, **source):
    rule = {"IpProtocol": "tcp", "FromPort": port, "ToPort": port}
    rule.update(source)
    return rule


def security_groups(r):
    r["LoadBalancerSecurityGroup"] = {"Type": "AWS::EC2::SecurityGroup", "Properties": {
        "GroupDescription": "slipway load balancer: the apps (80, 443) and the coordinator API "
                            "(8443)",
        "VpcId": Ref("Vpc"),
        "SecurityGroupIngress": [
            ingress(80, CidrIp=Ref("AllowedCidr"), Description="apps, HTTP"),
            ingress(443, CidrIp=Ref("AllowedCidr"), Description="apps, HTTPS"),
            ingress(8443, CidrIp=Ref("CoordinatorAllowedCidr"),
                    Description="coordinator API and GitLab webhooks")],
        "Tags": tags("lb")}}
    r["AgentSecurityGroup"] = {"Type": "AWS::EC2::SecurityGroup", "Properties": {
        "GroupDescription": "slipway agents: the proxy listener, from the load balancer only",
        "VpcId": Ref("Vpc"),
        "SecurityGroupIngress": [
            ingress(AGENT_PORT, SourceSecurityGroupId=Ref("LoadBalancerSecurityGroup"),
                    Description="traffic and health checks from the load balancer")],
        "Tags": tags("agents")}}
    r["CoordinatorSecurityGroup"] = {"Type": "AWS::EC2::SecurityGroup", "Properties": {
        "GroupDescription": "slipway coordinator: the agents and the load balancer",
        "VpcId": Ref("Vpc"),
        "SecurityGroupIngress": [
            ingress(COORD_PORT, SourceSecurityGroupId=Ref("AgentSecurityGroup"),
                    Description="agent protocol"),
            ingress(COORD_PORT, SourceSecurityGroupId=Ref("LoadBalancerSecurityGroup"),
                    Description="API and webhooks through the load balancer")],
        "Tags": tags("coordinator")}}


def ec2_trust():
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": Sub("ec2.${AWS::URLSuffix}")},
        "Action": "sts:AssumeRole"}]}


LOG_GROUPS = arn("logs", "log-group:" + LOG_PREFIX + "*")
LOG_STREAMS = arn("logs", "log-group:" + LOG_PREFIX + "*:log-stream:*")
REPOSITORIES = arn("ecr", "repository/" + REPO_PREFIX + "*")
QUEUES = arn("sqs", QUEUE_PREFIX + "*")
AGENT_GROUP_NAME = "${AWS::StackName}-agents"


def iam(r):
    """Least privilege: every action is justified in docs/aws-iam.md (the
    test checks each one is named there). Resources are scoped by name
    prefix; "*" only where an action takes no resource."""
    r["AgentRole"] = {"Type": "AWS::IAM::Role", "Properties": {
        "Description": "slipway agents (instance role)",
        "AssumeRolePolicyDocument": ec2_trust(),
        "Policies": [{"PolicyName": "slipway-agent", "PolicyDocument": {
            "Version": "2012-10-17", "Statement": [
                {"Sid": "ShipLogs", "Effect": "Allow",
                 "Action": ["logs:CreateLogGroup", "logs:CreateLogStream",
                            "logs:PutLogEvents", "logs:PutRetentionPolicy"],
                 "Resource": [LOG_GROUPS, LOG_STREAMS]},
                {"Sid": "OwnJobQueue", "Effect": "Allow",
                 "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage",
                            "sqs:ChangeMessageVisibility"],
                 "Resource": QUEUES},
                {"Sid": "PullImages", "Effect": "Allow",
                 "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                            "ecr:BatchCheckLayerAvailability"],
                 "Resource": REPOSITORIES},
                {"Sid": "RegistryToken", "Effect": "Allow",
                 "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
                {"Sid": "OwnLifecycleHook", "Effect": "Allow",
                 "Action": ["autoscaling:CompleteLifecycleAction",
                            "autoscaling:RecordLifecycleActionHeartbeat"],
                 "Resource": Sub("arn:${AWS::Partition}:autoscaling:${AWS::Region}:"
                                 "${AWS::AccountId}:autoScalingGroup:*:autoScalingGroupName/"
                                 + AGENT_GROUP_NAME)},
            ]}}],
        "Tags": tags("agent")}}
    r["AgentInstanceProfile"] = {"Type": "AWS::IAM::InstanceProfile",
                                 "Properties": {"Roles": [Ref("AgentRole")]}}
    r["CoordinatorRole"] = {"Type": "AWS::IAM::Role", "Properties": {
        "Description": "slipway coordinator (instance role)",
        "AssumeRolePolicyDocument": ec2_trust(),
        "Policies": [{"PolicyName": "slipway-coordinator", "PolicyDocument": {
            "Version": "2012-10-17", "Statement": [
                {"Sid": "ReadLogs", "Effect": "Allow",
                 "Action": ["logs:FilterLogEvents", "logs:GetLogEvents",
                            "logs:DescribeLogStreams"],
                 "Resource": [LOG_GROUPS, LOG_STREAMS]},
                {"Sid": "AgentJobQueues", "Effect": "Allow",
                 "Action": ["sqs:CreateQueue", "sqs:DeleteQueue", "sqs:GetQueueUrl",
                            "sqs:SendMessage", "sqs:TagQueue"],
                 "Resource": QUEUES},
                {"Sid": "FindOrphanedQueues", "Effect": "Allow",
                 "Action": ["sqs:ListQueues"], "Resource": "*"},
                {"Sid": "PushImages", "Effect": "Allow",
                 "Action": ["ecr:CreateRepository", "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload",
                            "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage",
                            "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                 "Resource": REPOSITORIES},
                {"Sid": "RegistryToken", "Effect": "Allow",
                 "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
            ]}}],
        "Tags": tags("coordinator")}}
    r["CoordinatorInstanceProfile"] = {"Type": "AWS::IAM::InstanceProfile",
                                       "Properties": {"Roles": [Ref("CoordinatorRole")]}}


KEEP_IMAGES_POLICY = json.dumps({"rules": [{
    "rulePriority": 1, "description": "keep the newest 50 images (rollbacks go back that far)",
    "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 50},
    "action": {"type": "expire"}}]}, separators=(",", ":"))


def apps(r):
    """Log groups and repositories of the apps named in the Apps parameter;
    the agents and the coordinator create those of other apps on first use,
    under the same prefixes."""
    for i in range(MAX_APPS):
        r["AppLogGroup%d" % i] = {
            "Type": "AWS::Logs::LogGroup", "Condition": "HasApp%d" % i,
            "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
            "Properties": {"LogGroupName": {"Fn::Join": ["", [LOG_PREFIX, app_name(i)]]},
                           "RetentionInDays": Ref("LogRetentionDays")}}
        r["AppRepository%d" % i] = {
            "Type": "AWS::ECR::Repository", "Condition": "HasApp%d" % i,
            "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
            "Properties": {
                "RepositoryName": {"Fn::Join": ["", [REPO_PREFIX, app_name(i)]]},
                "ImageScanningConfiguration": {"ScanOnPush": True},
                "ImageTagMutability": "MUTABLE",
                "LifecyclePolicy": {"LifecyclePolicyText": KEEP_IMAGES_POLICY}}}


def load_balancer(r):
    public = [Ref("PublicSubnet%d" % i) for i in range(AZ_COUNT)]
    r["LoadBalancer"] = {"Type": "AWS::ElasticLoadBalancingV2::LoadBalancer", "Properties": {
        "Type": "application", "Scheme": "internet-facing", "Subnets": public,
        "SecurityGroups": [Ref("LoadBalancerSecurityGroup")],
        "LoadBalancerAttributes": [
            # Longer than ALB's 60 s idle timeout is the proxy's (75 s): the
            # load balancer, not the proxy, closes idle connections.
            {"Key": "idle_timeout.timeout_seconds", "Value": "60"},
            {"Key": "routing.http.drop_invalid_header_fields.enabled", "Value": "true"}],
        "Tags": tags("lb")}}
    r["AgentTargetGroup"] = {"Type": "AWS::ElasticLoadBalancingV2::TargetGroup", "Properties": {
        "VpcId": Ref("Vpc"), "TargetType": "instance", "Protocol": "HTTP", "Port": AGENT_PORT,
        # The proxy answers this itself: 503 until a release serves on the
        # port, and again from the moment the instance starts draining.
        "HealthCheckEnabled": True, "HealthCheckProtocol": "HTTP",
        "HealthCheckPath": HEALTH_PATH, "HealthCheckPort": "traffic-port",
        "HealthCheckIntervalSeconds": 10, "HealthCheckTimeoutSeconds": 5,
        "HealthyThresholdCount": 2, "UnhealthyThresholdCount": 2,
        "Matcher": {"HttpCode": "200"},
        "TargetGroupAttributes": [
            {"Key": "deregistration_delay.timeout_seconds",
             "Value": Ref("DeregistrationDelaySeconds")}],
        "Tags": tags("agents")}}
    r["CoordinatorTargetGroup"] = {
        "Type": "AWS::ElasticLoadBalancingV2::TargetGroup", "Properties": {
            "VpcId": Ref("Vpc"), "TargetType": "instance", "Protocol": "HTTP",
            "Port": COORD_PORT, "HealthCheckPath": "/v1/health",
            "HealthCheckIntervalSeconds": 15, "Matcher": {"HttpCode": "200"},
            "Targets": [{"Id": Ref("CoordinatorInstance"), "Port": COORD_PORT}],
            "TargetGroupAttributes": [
                # Long polls and log streams end by themselves; a restart of the
                # coordinator needs no long drain.
                {"Key": "deregistration_delay.timeout_seconds", "Value": "10"}],
            "Tags": tags("coordinator")}}
    forward = [{"Type": "forward", "TargetGroupArn": Ref("AgentTargetGroup")}]
    r["HttpListener"] = {"Type": "AWS::ElasticLoadBalancingV2::Listener", "Properties": {
        "LoadBalancerArn": Ref("LoadBalancer"), "Port": 80, "Protocol": "HTTP",
        "DefaultActions": forward}}
    r["HttpsListener"] = {"Type": "AWS::ElasticLoadBalancingV2::Listener", "Properties": {
        "LoadBalancerArn": Ref("LoadBalancer"), "Port": 443, "Protocol": "HTTPS",
        "Certificates": [{"CertificateArn": Ref("CertificateArn")}],
        "SslPolicy": "ELBSecurityPolicy-TLS13-1-2-2021-06", "DefaultActions": forward}}
    r["CoordinatorListener"] = {"Type": "AWS::ElasticLoadBalancingV2::Listener", "Properties": {
        "LoadBalancerArn": Ref("LoadBalancer"), "Port": 8443, "Protocol": "HTTPS",
        "Certificates": [{"CertificateArn": Ref("CertificateArn")}],
        "SslPolicy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
        "DefaultActions": [{"Type": "forward",
                            "TargetGroupArn": Ref("CoordinatorTargetGroup")}]}}


def replace_once(text, old, new, where):
    if text.count(old) != 1:
        raise SystemExit("template.py: %s: expected exactly one %r (the file changed?)"
                         % (where, old))
    return text.replace(old, new)


def agent_user_data():
    """init/cloud-init/agent.yaml with its EDIT lines filled from the stack."""
    with open(AGENT_USER_DATA) as f:
        text = escape_sub(f.read())
    w = "init/cloud-init/agent.yaml"
    text = replace_once(
        text, 'coordinator.url = "https://slipway.internal.example.com"   # EDIT',
        'coordinator.url = "http://${CoordinatorInstance.PrivateIp}:%d"' % COORD_PORT, w)
    text = replace_once(
        text, 'agent.fleet = "default"                                     # EDIT',
        'agent.fleet = "${Fleet}"', w)
    text = replace_once(text, '      logs.group_prefix = "/slipway/"\n', (
        '      logs.group_prefix = "%s"\n'
        '      cloudwatch.retention_days = ${LogRetentionDays}\n'
        '      # Identity: a presigned sts:GetCallerIdentity, not a shared secret.\n'
        '      coordinator.aws_identity = true\n'
        '      aws.server_id = "${AWS::StackName}"\n'
        '      # Scale-in: this group\'s termination lifecycle hook (and spot notices).\n'
        '      lifecycle.enabled = true\n'
        '      lifecycle.group_name = "%s"\n'
        '      lifecycle.hook_name = "%s"\n'
        '      lifecycle.deregistration_delay = "${DeregistrationDelaySeconds}s"\n'
        % (LOG_PREFIX, AGENT_GROUP_NAME, HOOK_NAME)), w)
    text = replace_once(
        text, 'content: "EDIT-ME-fleet-bootstrap-token"   # EDIT',
        'content: "unused: these agents register with their AWS identity '
        '(coordinator.aws_identity)"', w)
    # The agent keeps app containers off the instance metadata service with an
    # iptables rule (DOCKER-USER): that takes CAP_NET_ADMIN, which the unit
    # does not grant by default.
    text = replace_once(text, "\nruncmd:\n", (
        "\n  - path: /etc/systemd/system/slipway-agent.service.d/metadata-block.conf\n"
        "    owner: root:root\n"
        "    permissions: \"0644\"\n"
        "    content: |\n"
        "      # Written by init/aws/slipway.yaml: the agent's iptables rule that keeps\n"
        "      # app containers off the instance metadata service needs CAP_NET_ADMIN.\n"
        "      [Service]\n"
        "      AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW\n"
        "      CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW\n"
        "      ReadWritePaths=-/run/xtables.lock\n"
        "\nruncmd:\n"), w)
    return text


COORDINATOR_USER_DATA = """#cloud-config
#
# slipway coordinator (init/aws/slipway.yaml): the store lives on the data
# volume, mounted at /var/lib/slipway before the coordinator starts.

write_files:
  - path: /etc/slipway/coordinator.conf
    owner: root:root
    permissions: "0640"
    content: |
      # Written by init/aws/slipway.yaml. Every key: slipway-coordinator --help
      server.listen = "0.0.0.0:%(port)d"
      server.public_url = "${CoordinatorUrl}"
      data.dir = "/var/lib/slipway"
      # Agents prove who they are with a presigned sts:GetCallerIdentity: the
      # agents' role of this account, signed for this stack's coordinator.
      agents.aws_accounts = "${AWS::AccountId}"
      agents.aws_roles = "${AgentRole}"
      agents.aws_server_id = "${AWS::StackName}"
      agents.sts_endpoint = "https://sts.${AWS::Region}.${AWS::URLSuffix}"
      # Jobs travel through one SQS queue per agent (slipway-<instance id>),
      # created when the agent registers.
      queue.backend = "sqs"
      queue.sqs_region = "${AWS::Region}"
      # `slipway logs` reads the apps' log groups in CloudWatch Logs.
      logs.cloudwatch_region = "${AWS::Region}"
      logs.group_prefix = "%(logs)s"
      # Images: the app's repository %(repos)s<app> in this account's ECR (created
      # at its first build), pushed with GetAuthorizationToken logins.
      registry.kind = "ecr"
      registry.region = "${AWS::Region}"
      registry.account = "${AWS::AccountId}"
      registry.repository_prefix = "%(repos)s"

  - path: /usr/local/lib/slipway/coordinator-bootstrap.sh
    owner: root:root
    permissions: "0700"
    content: |
      #!/bin/sh
      # Mounts the data volume (formatting it the first time only), then starts
      # the coordinator. Output: /var/log/cloud-init-output.log
      set -eu
      die() { echo "slipway-bootstrap: ERROR: $*" >&2; exit 1; }
      command -v slipway-coordinator >/dev/null ||
        die "this AMI has no slipway-coordinator (CoordinatorAmiId)"
      # Nitro instances name EBS volumes by id: nvme-Amazon_Elastic_Block_Store_vol0123...
      dev=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$(echo "${CoordinatorDataVolume}" | tr -d -)
      [ -e "$dev" ] || dev=/dev/xvdf
      i=0
      while [ ! -e "$dev" ]; do
        i=$((i + 1)); [ "$i" -le 120 ] || die "the data volume never appeared"
        sleep 1
      done
      if ! blkid "$dev" >/dev/null 2>&1; then
        mkfs.ext4 -q -L slipway-data "$dev"
      fi
      mkdir -p /var/lib/slipway
      grep -q ' /var/lib/slipway ' /etc/fstab ||
        echo "LABEL=slipway-data /var/lib/slipway ext4 defaults,nofail 0 2" >>/etc/fstab
      mountpoint -q /var/lib/slipway || mount /var/lib/slipway
      systemd-sysusers
      chown slipway:slipway /var/lib/slipway
      chmod 0700 /var/lib/slipway
      chgrp slipway /etc/slipway/coordinator.conf
      slipway-coordinator --check --config /etc/slipway/coordinator.conf >/dev/null ||
        die "slipway-coordinator --check refuses /etc/slipway/coordinator.conf"
      systemctl enable --now docker.service slipway-coordinator.service

runcmd:
  - [/bin/sh, /usr/local/lib/slipway/coordinator-bootstrap.sh]
""" % {"port": COORD_PORT, "logs": LOG_PREFIX, "repos": REPO_PREFIX}


def agents(r):
    private = [Ref("PrivateSubnet%d" % i) for i in range(AZ_COUNT)]
    r["AgentLaunchTemplate"] = {"Type": "AWS::EC2::LaunchTemplate", "Properties": {
        "LaunchTemplateName": Sub("${AWS::StackName}-agent"),
        "LaunchTemplateData": {
            "ImageId": Ref("AgentAmiId"),
            "InstanceType": Ref("AgentInstanceType"),
            "IamInstanceProfile": {"Arn": GetAtt("AgentInstanceProfile", "Arn")},
            "SecurityGroupIds": [Ref("AgentSecurityGroup")],
            # IMDSv2 only, one hop: a container (one hop further) gets no token.
            # Tags in the metadata: the agent reads its group's name there.
            "MetadataOptions": {"HttpEndpoint": "enabled", "HttpTokens": "required",
                                "HttpPutResponseHopLimit": Ref("MetadataHopLimit"),
                                "InstanceMetadataTags": "enabled"},
            "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {
                "VolumeSize": Ref("RootVolumeSize"), "VolumeType": "gp3", "Encrypted": True,
                "DeleteOnTermination": True}}],
            "UserData": Base64(Sub(agent_user_data())),
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags("agent")},
                                  {"ResourceType": "volume", "Tags": tags("agent")}]}}}
    r["AgentGroup"] = {
        "Type": "AWS::AutoScaling::AutoScalingGroup",
        "UpdatePolicy": {"AutoScalingRollingUpdate": {
            "MinInstancesInService": Ref("AgentMinSize"), "MaxBatchSize": 1,
            "PauseTime": "PT5M"}},
        "Properties": {
            # A fixed name: the agents' role names this group in its policy,
            # and a Ref would make role -> group -> template -> role a cycle.
            "AutoScalingGroupName": Sub(AGENT_GROUP_NAME),
            "LaunchTemplate": {"LaunchTemplateId": Ref("AgentLaunchTemplate"),
                               "Version": GetAtt("AgentLaunchTemplate", "LatestVersionNumber")},
            "MinSize": Ref("AgentMinSize"), "MaxSize": Ref("AgentMaxSize"),
            "DesiredCapacity": Ref("AgentDesiredCapacity"),
            "VPCZoneIdentifier": private,
            "TargetGroupARNs": [Ref("AgentTargetGroup")],
            "HealthCheckType": "ELB", "HealthCheckGracePeriod": 300,
            "CapacityRebalance": True,
            "LifecycleHookSpecificationList": [{
                "LifecycleHookName": HOOK_NAME,
                "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
                "HeartbeatTimeout": Ref("DrainTimeoutSeconds"),
                "DefaultResult": "CONTINUE"}],
            "Tags": [{"Key": "Name", "Value": Sub("${AWS::StackName}-agent"),
                      "PropagateAtLaunch": True}]}}


def coordinator(r):
    # One instance: the store is SQLite (one writer on a local file system;
    # EFS does not do SQLite's locking safely) and builds need a Docker
    # engine (Fargate has none). Its data volume outlives it.
    r["CoordinatorDataVolume"] = {
        "Type": "AWS::EC2::Volume", "DeletionPolicy": "Snapshot",
        "UpdateReplacePolicy": "Snapshot", "Properties": {
            "AvailabilityZone": GetAtt("PrivateSubnet0", "AvailabilityZone"),
            "Size": Ref("CoordinatorVolumeSize"), "VolumeType": "gp3", "Encrypted": True,
            "Tags": tags("coordinator-data")}}
    r["CoordinatorInstance"] = {"Type": "AWS::EC2::Instance", "Properties": {
        "ImageId": Ref("CoordinatorAmiId"),
        "InstanceType": Ref("CoordinatorInstanceType"),
        "SubnetId": Ref("PrivateSubnet0"),
        "SecurityGroupIds": [Ref("CoordinatorSecurityGroup")],
        "IamInstanceProfile": Ref("CoordinatorInstanceProfile"),
        "MetadataOptions": {"HttpEndpoint": "enabled", "HttpTokens": "required",
                            "HttpPutResponseHopLimit": 1},
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {
            "VolumeSize": 30, "VolumeType": "gp3", "Encrypted": True,
            "DeleteOnTermination": True}}],
        "Volumes": [{"Device": "/dev/sdf", "VolumeId": Ref("CoordinatorDataVolume")}],
        "UserData": Base64(Sub(COORDINATOR_USER_DATA)),
        "Tags": tags("coordinator")}}


def outputs():
    return {
        "LoadBalancerDnsName": {
            "Description": "Point the apps' host names (and CoordinatorUrl's) here",
            "Value": GetAtt("LoadBalancer", "DNSName")},
        "CoordinatorUrl": {"Description": "The coordinator for the CLI and GitLab",
                           "Value": Ref("CoordinatorUrl")},
        "CoordinatorPrivateUrl": {
            "Description": "The coordinator as the agents reach it",
            "Value": Sub("http://${CoordinatorInstance.PrivateIp}:%d" % COORD_PORT)},
        "AgentGroupName": {"Description": "The agents' Auto Scaling group",
                           "Value": Ref("AgentGroup")},
        "AgentRoleArn": {"Description": "The agents' role (agents.aws_roles)",
                         "Value": GetAtt("AgentRole", "Arn")},
        "CoordinatorRoleArn": {"Description": "The coordinator's role",
                               "Value": GetAtt("CoordinatorRole", "Arn")},
    }


def build():
    r = {}
    network(r)
    security_groups(r)
    iam(r)
    apps(r)
    load_balancer(r)
    agents(r)
    coordinator(r)
    p = parameters()
    p["CoordinatorUrl"] = {
        "Type": "String", "AllowedPattern": "https://[a-z0-9.-]+(:[0-9]+)?",
        "Description": "The coordinator's public URL, a name in CertificateArn pointing at "
                       "the load balancer (port 8443): https://slipway.example.com:8443"}
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "slipway: VPC (3 zones), the agents' Auto Scaling group behind an "
                       "application load balancer, the coordinator, IAM roles, log groups and "
                       "image repositories (generated by init/aws/template.py)",
        "Parameters": p,
        "Conditions": conditions(),
        "Resources": r,
        "Outputs": outputs(),
    }


# ---- the YAML emitter ----

SHORT_TAGS = {"Ref": "!Ref", "Fn::Sub": "!Sub", "Fn::GetAtt": "!GetAtt",
              "Fn::GetAZs": "!GetAZs", "Fn::Base64": "!Base64", "Fn::ImportValue":
              "!ImportValue", "Condition": "!Condition"}
PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.\-/]*$")


def is_scalar(v):
    return isinstance(v, (str, int, float, bool)) or v is None


def short_form(v):
    """(tag, scalar) when v is an intrinsic function written with a short tag."""
    if not isinstance(v, dict) or len(v) != 1:
        return None
    (k, arg), = v.items()
    tag = SHORT_TAGS.get(k)
    if not tag:
        return None
    if k == "Fn::GetAtt" and isinstance(arg, list) and len(arg) == 2 and \
            all(isinstance(a, str) for a in arg):
        return tag, arg[0] + "." + arg[1]
    if isinstance(arg, str):
        return tag, arg
    return None


def block_ok(s):
    """A multi-line string that a literal block holds exactly."""
    return "\n" in s and not s.startswith((" ", "\n")) and \
        all(c == "\n" or c == "\t" or ord(c) >= 0x20 for c in s) and "\r" not in s


def scalar(v, indent):
    """The text after "key: " or "- " (may span lines for a literal block)."""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return json.dumps(v)
    if block_ok(v):
        body = v[:-1] if v.endswith("\n") else v
        chomp = "" if v.endswith("\n") and not v.endswith("\n\n") else (
            "-" if not v.endswith("\n") else "+")
        if chomp == "+":
            body = v[:-1]
        lines = body.split("\n")
        pad = " " * (indent + 2)
        return "|" + chomp + "\n" + "\n".join((pad + ln) if ln else "" for ln in lines)
    return json.dumps(v)


def key_text(k):
    return k if PLAIN_KEY.match(k) and k not in ("true", "false", "null", "y", "n",
                                                 "yes", "no", "on", "off") else json.dumps(k)


def emit_value(v, indent):
    """(inline text, block lines): a value after "key:" or "-"."""
    sf = short_form(v)
    if sf:
        return " " + sf[0] + " " + scalar(sf[1], indent), []
    if is_scalar(v):
        return " " + scalar(v, indent), []
    if isinstance(v, dict):
        if not v:
            return " {}", []
        return "", emit_map(v, indent + 2)
    if isinstance(v, list):
        if not v:
            return " []", []
        return "", emit_list(v, indent + 2)
    raise TypeError("cannot write %r" % (v,))


def emit_map(d, indent):
    out = []
    for k, v in d.items():
        inline, block = emit_value(v, indent)
        out.append(" " * indent + key_text(k) + ":" + inline)
        out.extend(block)
    return out


def emit_list(lst, indent):
    out = []
    for v in lst:
        inline, block = emit_value(v, indent)
        if inline or not block:
            out.append(" " * indent + "-" + inline)
            out.extend(block)
        elif isinstance(v, dict):
            # "- Key: value" with the mapping's other keys under it
            first = block[0]
            out.append(" " * indent + "- " + first[indent + 2:])
            out.extend(block[1:])
        else:
            out.append(" " * indent + "-")
            out.extend(block)
    return out


def to_yaml(doc):
    head = ("# slipway: one CloudFormation stack for a whole team setup.\n"
            "# GENERATED by init/aws/template.py: edit that file, then run it.\n"
            "# Deploy: aws cloudformation deploy --template-file init/aws/slipway.yaml \\\n"
            "#   --stack-name slipway --capabilities CAPABILITY_IAM --parameter-overrides ...\n"
            "# (docs/operations.md, \"Running on AWS\"; the IAM policies: docs/aws-iam.md)\n")
    return head + "\n".join(emit_map(doc, 0)) + "\n"


def main(argv):
    doc = build()
    text = to_yaml(doc)
    if "--json" in argv:
        print(json.dumps(doc, indent=2))
        return 0
    if "--check" in argv:
        with open(OUTPUT) as f:
            if f.read() != text:
                print("init/aws/slipway.yaml is not what init/aws/template.py writes: run it")
                return 1
        return 0
    with open(OUTPUT, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
