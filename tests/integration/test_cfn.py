#!/usr/bin/env python3
"""init/aws/slipway.yaml, the CloudFormation stack of a whole setup, checked
without an AWS account (Python standard library only):

- it is exactly what init/aws/template.py writes, and reading the YAML back
  (a loader for the emitter's subset, below) gives the same structure;
- every resource type is one this test knows, every property (and the nested
  ones of the structures that matter) is a property of that type, required
  ones are there; the tables come from the AWS CloudFormation resource
  reference (the registry's resource provider schemas, as cfn-lint 1.51
  ships them: data/schemas/resources);
- every Ref, Fn::GetAtt and ${...} of Fn::Sub names a parameter, a resource
  or a pseudo parameter, and GetAtt an attribute that type has; conditions
  and DependsOn resolve; every parameter and condition is used;
- what the design needs: IMDSv2 only with hop limit 1 by default, metadata
  tags on, the termination lifecycle hook with the agent's hook name, the
  load balancer's health check on the proxy's health path, a deregistration
  delay the agents wait out, IAM without wildcard actions and "*" resources
  only where an action takes none, each action justified in docs/aws-iam.md;
- the configuration files the user data writes pass `slipway-agent --check`
  and `slipway-coordinator --check` (with the parameters' defaults);
- cfn-lint, when it is installed (Debian does not package it).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from tap import Tap  # noqa: E402

TOP = os.environ.get("SLIPWAY_TOP") or os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = os.environ.get("SLIPWAY_BUILD", os.path.join(TOP, "build"))
if not os.path.isabs(BUILD):
    BUILD = os.path.join(TOP, BUILD)
sys.path.insert(0, os.path.join(TOP, "init", "aws"))
import template as T  # noqa: E402

YAML_PATH = os.path.join(TOP, "init", "aws", "slipway.yaml")
IAM_DOC = os.path.join(TOP, "docs", "aws-iam.md")

# ---- what CloudFormation knows (AWS CloudFormation resource reference) ----

# type -> (settable properties, required properties, Fn::GetAtt attributes)
RESOURCES = {
    "AWS::EC2::VPC": (
        {"CidrBlock", "EnableDnsHostnames", "EnableDnsSupport", "InstanceTenancy",
         "Ipv4IpamPoolId", "Ipv4NetmaskLength", "Tags"}, set(),
        {"CidrBlock", "CidrBlockAssociations", "DefaultNetworkAcl", "DefaultSecurityGroup",
         "Ipv6CidrBlocks", "VpcId"}),
    "AWS::EC2::InternetGateway": ({"Tags"}, set(), {"InternetGatewayId"}),
    "AWS::EC2::VPCGatewayAttachment": (
        {"InternetGatewayId", "VpcId", "VpnGatewayId"}, {"VpcId"}, set()),
    "AWS::EC2::Subnet": (
        {"AssignIpv6AddressOnCreation", "AvailabilityZone", "AvailabilityZoneId", "CidrBlock",
         "EnableDns64", "EnableLniAtDeviceIndex", "Ipv4IpamPoolId", "Ipv4NetmaskLength",
         "Ipv6CidrBlock", "Ipv6IpamPoolId", "Ipv6Native", "Ipv6NetmaskLength",
         "MapPublicIpOnLaunch", "OutpostArn", "PrivateDnsNameOptionsOnLaunch", "Tags",
         "VpcId"}, {"VpcId"},
        {"AvailabilityZone", "AvailabilityZoneId", "CidrBlock", "Ipv6CidrBlocks",
         "NetworkAclAssociationId", "OutpostArn", "SubnetId", "VpcId"}),
    "AWS::EC2::RouteTable": ({"Tags", "VpcId"}, {"VpcId"}, {"RouteTableId"}),
    "AWS::EC2::Route": (
        {"CarrierGatewayId", "CoreNetworkArn", "DestinationCidrBlock",
         "DestinationIpv6CidrBlock", "DestinationPrefixListId", "EgressOnlyInternetGatewayId",
         "GatewayId", "InstanceId", "LocalGatewayId", "NatGatewayId", "NetworkInterfaceId",
         "RouteTableId", "TransitGatewayId", "VpcEndpointId", "VpcPeeringConnectionId"},
        {"RouteTableId"}, {"CidrBlock"}),
    "AWS::EC2::SubnetRouteTableAssociation": (
        {"RouteTableId", "SubnetId"}, {"RouteTableId", "SubnetId"}, {"Id"}),
    "AWS::EC2::EIP": (
        {"Address", "Domain", "InstanceId", "IpamPoolId", "NetworkBorderGroup",
         "PublicIpv4Pool", "Tags", "TransferAddress"}, set(), {"AllocationId", "PublicIp"}),
    "AWS::EC2::NatGateway": (
        {"AllocationId", "AvailabilityMode", "AvailabilityZoneAddresses", "ConnectivityType",
         "MaxDrainDurationSeconds", "PrivateIpAddress", "SecondaryAllocationIds",
         "SecondaryPrivateIpAddressCount", "SecondaryPrivateIpAddresses", "SubnetId", "Tags",
         "VpcId"}, set(), {"NatGatewayId", "EniId"}),
    "AWS::EC2::SecurityGroup": (
        {"GroupDescription", "GroupName", "SecurityGroupEgress", "SecurityGroupIngress",
         "Tags", "VpcId"}, {"GroupDescription"}, {"GroupId", "VpcId"}),
    "AWS::IAM::Role": (
        {"AssumeRolePolicyDocument", "Description", "ManagedPolicyArns",
         "MaxSessionDuration", "Path", "PermissionsBoundary", "Policies", "RoleName", "Tags"},
        {"AssumeRolePolicyDocument"}, {"Arn", "RoleId"}),
    "AWS::IAM::InstanceProfile": (
        {"InstanceProfileName", "Path", "Roles"}, {"Roles"}, {"Arn"}),
    "AWS::EC2::LaunchTemplate": (
        {"LaunchTemplateData", "LaunchTemplateName", "TagSpecifications",
         "VersionDescription"}, {"LaunchTemplateData"},
        {"DefaultVersionNumber", "LatestVersionNumber", "LaunchTemplateId"}),
    "AWS::AutoScaling::AutoScalingGroup": (
        {"AutoScalingGroupName", "AvailabilityZoneDistribution", "AvailabilityZoneIds",
         "AvailabilityZoneImpairmentPolicy", "AvailabilityZones", "CapacityRebalance",
         "CapacityReservationSpecification", "Context", "Cooldown", "DefaultInstanceWarmup",
         "DeletionProtection", "DesiredCapacity", "DesiredCapacityType",
         "HealthCheckGracePeriod", "HealthCheckType", "InstanceId", "InstanceLifecyclePolicy",
         "InstanceMaintenancePolicy", "LaunchConfigurationName", "LaunchTemplate",
         "LifecycleHookSpecificationList", "LoadBalancerNames", "MaxInstanceLifetime",
         "MaxSize", "MetricsCollection", "MinSize", "MixedInstancesPolicy",
         "NewInstancesProtectedFromScaleIn", "NotificationConfiguration",
         "NotificationConfigurations", "PlacementGroup", "ServiceLinkedRoleARN",
         "SkipZonalShiftValidation", "Tags", "TargetGroupARNs", "TerminationPolicies",
         "TrafficSources", "VPCZoneIdentifier"}, {"MinSize", "MaxSize"},
        {"AutoScalingGroupARN"}),
    "AWS::ElasticLoadBalancingV2::LoadBalancer": (
        {"EnableCapacityReservationProvisionStabilize", "EnablePrefixForIpv6SourceNat",
         "EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic", "IpAddressType",
         "Ipv4IpamPoolId", "LoadBalancerAttributes", "MinimumLoadBalancerCapacity", "Name",
         "Scheme", "SecurityGroups", "SubnetMappings", "Subnets", "Tags", "Type"}, set(),
        {"CanonicalHostedZoneID", "DNSName", "LoadBalancerArn", "LoadBalancerFullName",
         "LoadBalancerName", "SecurityGroups"}),
    "AWS::ElasticLoadBalancingV2::TargetGroup": (
        {"HealthCheckEnabled", "HealthCheckIntervalSeconds", "HealthCheckPath",
         "HealthCheckPort", "HealthCheckProtocol", "HealthCheckTimeoutSeconds",
         "HealthyThresholdCount", "IpAddressType", "Matcher", "Name", "Port", "Protocol",
         "ProtocolVersion", "Tags", "TargetControlPort", "TargetGroupAttributes", "TargetType",
         "Targets", "UnhealthyThresholdCount", "VpcId"}, set(),
        {"LoadBalancerArns", "TargetGroupArn", "TargetGroupFullName", "TargetGroupName"}),
    "AWS::ElasticLoadBalancingV2::Listener": (
        {"AlpnPolicy", "Certificates", "DefaultActions", "ListenerAttributes",
         "LoadBalancerArn", "MutualAuthentication", "Port", "Protocol", "SslPolicy"},
        {"LoadBalancerArn", "DefaultActions"}, {"ListenerArn"}),
    "AWS::EC2::Instance": (
        {"AdditionalInfo", "Affinity", "AvailabilityZone", "BlockDeviceMappings", "CpuOptions",
         "CreditSpecification", "DisableApiTermination", "EbsOptimized",
         "ElasticGpuSpecifications", "ElasticInferenceAccelerators", "EnclaveOptions",
         "HibernationOptions", "HostId", "HostResourceGroupArn", "IamInstanceProfile",
         "ImageId", "InstanceInitiatedShutdownBehavior", "InstanceType", "Ipv6AddressCount",
         "Ipv6Addresses", "KernelId", "KeyName", "LaunchTemplate", "LicenseSpecifications",
         "MetadataOptions", "Monitoring", "NetworkInterfaces", "PlacementGroupName",
         "PrivateDnsNameOptions", "PrivateIpAddress", "PropagateTagsToVolumeOnCreation",
         "RamdiskId", "SecurityGroupIds", "SecurityGroups", "SourceDestCheck",
         "SsmAssociations", "SubnetId", "Tags", "Tenancy", "UserData", "Volumes"}, set(),
        {"AvailabilityZone", "InstanceId", "PrivateDnsName", "PrivateIp", "PublicDnsName",
         "PublicIp", "State", "VpcId"}),
    "AWS::EC2::Volume": (
        {"AutoEnableIO", "AvailabilityZone", "AvailabilityZoneId", "Encrypted", "Iops",
         "KmsKeyId", "MultiAttachEnabled", "OutpostArn", "Size", "SnapshotId",
         "SourceVolumeId", "Tags", "Throughput", "VolumeInitializationRate", "VolumeType"},
        set(), {"VolumeId"}),
    "AWS::Logs::LogGroup": (
        {"BearerTokenAuthenticationEnabled", "DataProtectionPolicy",
         "DeletionProtectionEnabled", "FieldIndexPolicies", "KmsKeyId", "LogGroupClass",
         "LogGroupName", "ResourcePolicyDocument", "RetentionInDays", "Tags"}, set(), {"Arn"}),
    "AWS::ECR::Repository": (
        {"EmptyOnDelete", "EncryptionConfiguration", "ImageScanningConfiguration",
         "ImageTagMutability", "ImageTagMutabilityExclusionFilters", "LifecyclePolicy",
         "RepositoryName", "RepositoryPolicyText", "Tags"}, set(), {"Arn", "RepositoryUri"}),
}

# Nested structures: (type, path of the property) -> allowed keys. "[]" is a
# list's items.
NESTED = {
    ("AWS::EC2::LaunchTemplate", "LaunchTemplateData"): {
        "BlockDeviceMappings", "CapacityReservationSpecification", "CpuOptions",
        "CreditSpecification", "DisableApiStop", "DisableApiTermination", "EbsOptimized",
        "EnclaveOptions", "HibernationOptions", "IamInstanceProfile", "ImageId",
        "InstanceInitiatedShutdownBehavior", "InstanceMarketOptions", "InstanceRequirements",
        "InstanceType", "KernelId", "KeyName", "LicenseSpecifications", "MaintenanceOptions",
        "MetadataOptions", "Monitoring", "NetworkInterfaces", "Placement",
        "PrivateDnsNameOptions", "RamDiskId", "SecurityGroupIds", "SecurityGroups",
        "TagSpecifications", "UserData"},
    ("AWS::EC2::LaunchTemplate", "LaunchTemplateData.MetadataOptions"): {
        "HttpEndpoint", "HttpProtocolIpv6", "HttpPutResponseHopLimit", "HttpTokens",
        "InstanceMetadataTags"},
    ("AWS::EC2::LaunchTemplate", "LaunchTemplateData.BlockDeviceMappings[]"): {
        "DeviceName", "Ebs", "NoDevice", "VirtualName"},
    ("AWS::EC2::LaunchTemplate", "LaunchTemplateData.BlockDeviceMappings[].Ebs"): {
        "DeleteOnTermination", "EbsCardIndex", "Encrypted", "Iops", "KmsKeyId", "SnapshotId",
        "Throughput", "VolumeInitializationRate", "VolumeSize", "VolumeType"},
    ("AWS::EC2::LaunchTemplate", "LaunchTemplateData.IamInstanceProfile"): {"Arn", "Name"},
    ("AWS::EC2::LaunchTemplate", "LaunchTemplateData.TagSpecifications[]"): {
        "ResourceType", "Tags"},
    ("AWS::AutoScaling::AutoScalingGroup", "LifecycleHookSpecificationList[]"): {
        "DefaultResult", "HeartbeatTimeout", "LifecycleHookName", "LifecycleTransition",
        "NotificationMetadata", "NotificationTargetARN", "RoleARN"},
    ("AWS::AutoScaling::AutoScalingGroup", "LaunchTemplate"): {
        "LaunchTemplateId", "LaunchTemplateName", "Version"},
    ("AWS::AutoScaling::AutoScalingGroup", "Tags[]"): {"Key", "PropagateAtLaunch", "Value"},
    ("AWS::ElasticLoadBalancingV2::Listener", "DefaultActions[]"): {
        "AuthenticateCognitoConfig", "AuthenticateOidcConfig", "FixedResponseConfig",
        "ForwardConfig", "JwtValidationConfig", "Order", "RedirectConfig", "TargetGroupArn",
        "Type"},
    ("AWS::ElasticLoadBalancingV2::Listener", "Certificates[]"): {"CertificateArn"},
    ("AWS::ElasticLoadBalancingV2::TargetGroup", "TargetGroupAttributes[]"): {"Key", "Value"},
    ("AWS::ElasticLoadBalancingV2::TargetGroup", "Matcher"): {"GrpcCode", "HttpCode"},
    ("AWS::ElasticLoadBalancingV2::TargetGroup", "Targets[]"): {
        "AvailabilityZone", "Id", "Port", "QuicServerId"},
    ("AWS::ElasticLoadBalancingV2::LoadBalancer", "LoadBalancerAttributes[]"): {"Key", "Value"},
    ("AWS::IAM::Role", "Policies[]"): {"PolicyDocument", "PolicyName"},
    ("AWS::EC2::Instance", "Volumes[]"): {"Device", "VolumeId"},
    ("AWS::EC2::Instance", "BlockDeviceMappings[]"): {
        "DeviceName", "Ebs", "NoDevice", "VirtualName"},
    ("AWS::EC2::Instance", "BlockDeviceMappings[].Ebs"): {
        "DeleteOnTermination", "Encrypted", "Iops", "KmsKeyId", "SnapshotId", "VolumeSize",
        "VolumeType"},
    ("AWS::EC2::Instance", "MetadataOptions"): {
        "HttpEndpoint", "HttpProtocolIpv6", "HttpPutResponseHopLimit", "HttpTokens",
        "InstanceMetadataTags"},
    ("AWS::EC2::SecurityGroup", "SecurityGroupIngress[]"): {
        "CidrIp", "CidrIpv6", "Description", "FromPort", "IpProtocol", "SourcePrefixListId",
        "SourceSecurityGroupId", "SourceSecurityGroupName", "SourceSecurityGroupOwnerId",
        "ToPort"},
    ("AWS::ECR::Repository", "LifecyclePolicy"): {"LifecyclePolicyText", "RegistryId"},
    ("AWS::ECR::Repository", "ImageScanningConfiguration"): {"ScanOnPush"},
}

RESOURCE_KEYS = {"Type", "Properties", "DependsOn", "Condition", "DeletionPolicy",
                 "UpdateReplacePolicy", "UpdatePolicy", "CreationPolicy", "Metadata"}
PSEUDO = {"AWS::AccountId", "AWS::NotificationARNs", "AWS::NoValue", "AWS::Partition",
          "AWS::Region", "AWS::StackId", "AWS::StackName", "AWS::URLSuffix"}
PARAM_TYPES = {"String", "Number", "List<Number>", "CommaDelimitedList",
               "AWS::EC2::Image::Id", "AWS::EC2::Subnet::Id", "AWS::EC2::VPC::Id"}
FUNCTIONS = {"Ref", "Fn::GetAtt", "Fn::Sub", "Fn::Select", "Fn::Split", "Fn::Join",
             "Fn::If", "Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or", "Fn::Base64",
             "Fn::GetAZs", "Fn::Cidr", "Fn::FindInMap", "Fn::ImportValue", "Condition"}
# Actions IAM defines with no resource type: "*" is the only resource they take.
NO_RESOURCE_ACTIONS = {"ecr:GetAuthorizationToken", "sqs:ListQueues"}


# ---- reading the YAML subset init/aws/template.py writes ----

class YamlError(Exception):
    pass


KEY_RE = re.compile(r'^("(?:[^"\\]|\\.)*"|[A-Za-z_][A-Za-z0-9_:.\-/]*):(?: (.*)|)$')
TAGS = {"!Ref": "Ref", "!Sub": "Fn::Sub", "!GetAtt": "Fn::GetAtt", "!GetAZs": "Fn::GetAZs",
        "!Base64": "Fn::Base64", "!ImportValue": "Fn::ImportValue", "!Condition": "Condition"}


def indent_of(line):
    return len(line) - len(line.lstrip(" "))


def skippable(line):
    s = line.strip()
    return not s or s.startswith("#")


class Loader:
    """Block mappings and sequences, double-quoted (JSON) strings, plain
    integers, true/false, {} and [], literal blocks (|, |-, |+) and the
    short-form tags in front of a scalar. Anything else is an error: this
    reads what the emitter writes, not YAML at large."""

    def __init__(self, text):
        if "\t" in "".join(ln[:indent_of(ln) + 1] for ln in text.split("\n")):
            raise YamlError("a tab in indentation")
        self.lines = text.split("\n")

    def next_content(self, i):
        while i < len(self.lines) and skippable(self.lines[i]):
            i += 1
        return i

    def load(self):
        i = self.next_content(0)
        value, i = self.block(i, 0)
        i = self.next_content(i)
        if i < len(self.lines):
            raise YamlError(f"line {i + 1}: unexpected text")
        return value

    def block(self, i, indent):
        line = self.lines[i]
        if indent_of(line) != indent:
            raise YamlError(f"line {i + 1}: indentation {indent_of(line)}, expected {indent}")
        if line[indent:].startswith("-"):
            return self.sequence(i, indent)
        return self.mapping(i, indent)

    def mapping(self, i, indent, first=None):
        out = {}
        while i < len(self.lines):
            if first is None:
                i = self.next_content(i)
                if i >= len(self.lines) or indent_of(self.lines[i]) < indent:
                    break
                text = self.lines[i]
                if indent_of(text) != indent:
                    raise YamlError(f"line {i + 1}: bad indentation")
                text = text[indent:]
            else:
                text, first = first, None
            m = KEY_RE.match(text)
            if not m:
                raise YamlError(f"line {i + 1}: not a 'key: value' line: {text!r}")
            key = json.loads(m.group(1)) if m.group(1).startswith('"') else m.group(1)
            if key in out:
                raise YamlError(f"line {i + 1}: duplicate key {key}")
            out[key], i = self.value(m.group(2) or "", i, indent)
        return out, i

    def sequence(self, i, indent):
        out = []
        while True:
            i = self.next_content(i)
            if i >= len(self.lines) or indent_of(self.lines[i]) < indent:
                break
            line = self.lines[i]
            if indent_of(line) != indent or not line[indent:].startswith("-"):
                break
            rest = line[indent + 1:]
            if rest and not rest.startswith(" "):
                raise YamlError(f"line {i + 1}: '-' without a space")
            rest = rest[1:] if rest else ""
            if KEY_RE.match(rest) and not rest.startswith(("!", '"')):
                v, i = self.mapping(i, indent + 2, first=rest)
            elif KEY_RE.match(rest) and rest.startswith('"') and \
                    re.match(r'^"(?:[^"\\]|\\.)*":', rest):
                v, i = self.mapping(i, indent + 2, first=rest)
            else:
                v, i = self.value(rest, i, indent)
            out.append(v)
        return out, i

    def value(self, rest, i, indent):
        """The value after 'key:' or '-' on line i; returns (value, next line)."""
        rest = rest.strip()
        if rest == "":
            j = self.next_content(i + 1)
            if j < len(self.lines) and indent_of(self.lines[j]) > indent:
                return self.block(j, indent_of(self.lines[j]))
            # a sequence may sit at the key's own indentation
            if j < len(self.lines) and indent_of(self.lines[j]) == indent and \
                    self.lines[j][indent:].startswith("- "):
                return self.sequence(j, indent)
            raise YamlError(f"line {i + 1}: a key without a value")
        if rest.startswith("!"):
            tag, _, arg = rest.partition(" ")
            if tag not in TAGS:
                raise YamlError(f"line {i + 1}: unknown tag {tag}")
            v, i = self.scalar(arg, i, indent)
            if not isinstance(v, str):
                raise YamlError(f"line {i}: {tag} needs a string")
            if tag == "!GetAtt":
                res, dot, attr = v.partition(".")
                if not dot:
                    raise YamlError(f"line {i}: !GetAtt needs Resource.Attribute")
                return {"Fn::GetAtt": [res, attr]}, i
            return {TAGS[tag]: v}, i
        return self.scalar(rest, i, indent)

    def scalar(self, text, i, indent):
        if text == "{}":
            return {}, i + 1
        if text == "[]":
            return [], i + 1
        if text in ("|", "|-", "|+"):
            return self.literal(text[1:], i, indent)
        if text.startswith('"'):
            try:
                return json.loads(text), i + 1
            except ValueError:
                raise YamlError(f"line {i + 1}: bad quoted string")
        if text in ("true", "false"):
            return text == "true", i + 1
        if text == "null":
            return None, i + 1
        if re.fullmatch(r"-?[0-9]+", text):
            return int(text), i + 1
        if re.fullmatch(r"[A-Za-z0-9_./:-]+", text):
            return text, i + 1
        raise YamlError(f"line {i + 1}: unsupported scalar {text!r}")

    def literal(self, chomp, i, indent):
        j = i + 1
        body = []
        block_indent = None
        while j < len(self.lines):
            ln = self.lines[j]
            if ln.strip() == "":
                body.append("")
                j += 1
                continue
            n = indent_of(ln)
            if block_indent is None:
                if n <= indent:
                    break
                block_indent = n
            if n < block_indent:
                break
            body.append(ln[block_indent:])
            j += 1
        # trailing blank lines belong to the chomping, not to the content
        content = body
        trailing = 0
        while content and content[-1] == "":
            content = content[:-1]
            trailing += 1
        text = "\n".join(content)
        if chomp == "":
            text += "\n"
        elif chomp == "+":
            text += "\n" * (trailing + 1)
        # lines after the block (the blanks were counted) restart at j - trailing
        return text, j - trailing if chomp != "+" else j


# ---- walking the template ----

def intrinsic(v):
    if isinstance(v, dict) and len(v) == 1:
        (k, a), = v.items()
        if k == "Ref" or k.startswith("Fn::") or k == "Condition":
            return k, a
    return None


def walk(v, fn, path="$"):
    fn(v, path)
    if isinstance(v, dict):
        for k, x in v.items():
            walk(x, fn, f"{path}.{k}")
    elif isinstance(v, list):
        for n, x in enumerate(v):
            walk(x, fn, f"{path}[{n}]")


SUB_RE = re.compile(r"\$\{([^}]*)\}")


def sub_names(text):
    """The names a Fn::Sub string refers to (not the ${!literal} ones)."""
    return [m.group(1) for m in SUB_RE.finditer(text) if not m.group(1).startswith("!")]


def nested_values(props, path):
    """Values at a NESTED path ("A.B[].C") under props; intrinsic values are skipped."""
    cur = [props]
    for seg in path.split("."):
        many = seg.endswith("[]")
        key = seg[:-2] if many else seg
        nxt = []
        for c in cur:
            if not isinstance(c, dict) or intrinsic(c) or key not in c:
                continue
            v = c[key]
            if many:
                if isinstance(v, list):
                    nxt.extend(x for x in v if not intrinsic(x))
            elif not intrinsic(v):
                nxt.append(v)
        cur = nxt
    return cur


# ---- the checks ----

def check_structure(doc):
    """Types, properties, references, usage: a list of problems."""
    bad = []
    params = doc.get("Parameters", {})
    res = doc.get("Resources", {})
    conds = doc.get("Conditions", {})
    for k in doc:
        if k not in ("AWSTemplateFormatVersion", "Description", "Parameters", "Conditions",
                     "Resources", "Outputs", "Mappings", "Metadata"):
            bad.append(f"unknown top-level section {k}")
    for name, p in params.items():
        if p.get("Type") not in PARAM_TYPES:
            bad.append(f"parameter {name}: type {p.get('Type')}")
        if "Default" in p and "AllowedValues" in p and p["Default"] not in p["AllowedValues"]:
            bad.append(f"parameter {name}: default not allowed")
        if "Default" in p and "AllowedPattern" in p and \
                not re.fullmatch(p["AllowedPattern"], str(p["Default"])):
            bad.append(f"parameter {name}: default does not match its pattern")
    used_params, used_conds = set(), set()

    def resolve(name, where, attr=None):
        if name in params:
            used_params.add(name)
            if attr:
                bad.append(f"{where}: {name}.{attr}: a parameter has no attributes")
        elif name in PSEUDO:
            if attr:
                bad.append(f"{where}: {name}.{attr}")
        elif name in res:
            if attr is not None:
                attrs = RESOURCES.get(res[name].get("Type"), (set(), set(), set()))[2]
                if attr not in attrs:
                    bad.append(f"{where}: {res[name].get('Type')} {name} has no attribute "
                               f"{attr}")
        else:
            bad.append(f"{where}: {name} is no parameter, resource or pseudo parameter")

    def refs(v, where):
        f = intrinsic(v)
        if not f:
            return
        k, a = f
        if k not in FUNCTIONS:
            bad.append(f"{where}: unknown function {k}")
        elif k == "Ref":
            if not isinstance(a, str):
                bad.append(f"{where}: Ref takes a name")
            else:
                resolve(a, where)
        elif k == "Fn::GetAtt":
            if not (isinstance(a, list) and len(a) == 2 and all(isinstance(x, str) for x in a)):
                bad.append(f"{where}: Fn::GetAtt takes [resource, attribute]")
            elif a[0] not in res:
                bad.append(f"{where}: GetAtt of unknown resource {a[0]}")
            else:
                resolve(a[0], where, a[1])
        elif k == "Fn::Sub":
            text, local = (a, {}) if isinstance(a, str) else (a[0], a[1])
            if not isinstance(text, str) or not isinstance(local, dict):
                bad.append(f"{where}: Fn::Sub takes a string or [string, variables]")
                return
            for n in sub_names(text):
                if n in local:
                    continue
                base, dot, attr = n.partition(".")
                if base.startswith("AWS::"):
                    resolve(n, where)
                else:
                    resolve(base, where, attr if dot else None)
        elif k == "Fn::If":
            if not (isinstance(a, list) and len(a) == 3) or a[0] not in conds:
                bad.append(f"{where}: Fn::If with an unknown condition")
            else:
                used_conds.add(a[0])
        elif k == "Condition":
            if a not in conds:
                bad.append(f"{where}: unknown condition {a}")
            used_conds.add(a)

    for name, r in res.items():
        t = r.get("Type")
        if t not in RESOURCES:
            bad.append(f"{name}: unknown resource type {t}")
            continue
        settable, required, _ = RESOURCES[t]
        for k in r:
            if k not in RESOURCE_KEYS:
                bad.append(f"{name}: unknown resource attribute {k}")
        props = r.get("Properties", {})
        for k in props:
            if k not in settable:
                bad.append(f"{name}: {t} has no property {k}")
        for k in required:
            if k not in props:
                bad.append(f"{name}: {t} requires {k}")
        for (nt, path), allowed in NESTED.items():
            if nt != t:
                continue
            for v in nested_values(props, path):
                if not isinstance(v, dict):
                    bad.append(f"{name}.{path}: expected an object")
                    continue
                for k in v:
                    if k not in allowed:
                        bad.append(f"{name}.{path}: unknown key {k}")
        if "Condition" in r:
            if r["Condition"] not in conds:
                bad.append(f"{name}: unknown condition {r['Condition']}")
            used_conds.add(r["Condition"])
        deps = r.get("DependsOn", [])
        for d in [deps] if isinstance(deps, str) else deps:
            if d not in res:
                bad.append(f"{name}: DependsOn unknown {d}")
        walk(r, lambda v, p, n=name: refs(v, n + p[1:]))
    for name, c in conds.items():
        walk(c, lambda v, p, n=name: refs(v, "Conditions." + n + p[1:]))
    for name, o in doc.get("Outputs", {}).items():
        walk(o, lambda v, p, n=name: refs(v, "Outputs." + n + p[1:]))
    for name in params:
        if name not in used_params:
            bad.append(f"parameter {name} is never used")
    for name in conds:
        if name not in used_conds:
            bad.append(f"condition {name} is never used")
    return bad


def statements(role):
    for pol in role["Properties"]["Policies"]:
        for st in pol["PolicyDocument"]["Statement"]:
            yield pol["PolicyName"], st


def as_list(v):
    return v if isinstance(v, list) else [v]


def user_data_text(resource, launch_template):
    props = resource["Properties"]
    ud = props["LaunchTemplateData"]["UserData"] if launch_template else props["UserData"]
    sub = ud["Fn::Base64"]["Fn::Sub"]
    return sub if isinstance(sub, str) else sub[0]


def file_content(user_data, path):
    """The content of a write_files entry of a cloud-config, dedented."""
    lines = user_data.split("\n")
    for n, ln in enumerate(lines):
        if ln.strip() == f"- path: {path}":
            k = n + 1
            while not lines[k].strip().startswith("content: |"):
                k += 1
            out = []
            base = None
            for ln2 in lines[k + 1:]:
                if ln2.strip() == "":
                    out.append("")
                    continue
                ind = indent_of(ln2)
                if base is None:
                    base = ind
                if ind < base:
                    break
                out.append(ln2[base:])
            return "\n".join(out).rstrip("\n") + "\n"
    return None


def fill(text, values):
    """Fn::Sub with sample values, then ${!x} back to ${x}."""
    def one(m):
        name = m.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        return str(values[name])
    return SUB_RE.sub(one, text)


def run_check(binary, conf_text, env_prefix):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "test.conf")
        with open(path, "w") as f:
            f.write(conf_text)
        env = {k: v for k, v in os.environ.items() if not k.startswith(env_prefix)}
        p = subprocess.run([binary, "--check", "--config", path], capture_output=True,
                           text=True, env=env, timeout=60)
        return p.returncode, p.stdout + p.stderr


def agent_default(key):
    """A default from agent/settings.c, so the template follows the agent."""
    with open(os.path.join(TOP, "agent", "settings.c")) as f:
        text = f.read()
    m = re.search(r'\.name = "%s", [^}]*?\.default_value = "([^"]*)"' % re.escape(key), text,
                  re.S)
    return m.group(1) if m else None


def main():
    t = Tap(14)
    doc = T.build()
    with open(YAML_PATH) as f:
        text = f.read()
    t.check("init/aws/slipway.yaml is what init/aws/template.py writes", text == T.to_yaml(doc),
            "run init/aws/template.py")
    try:
        loaded = Loader(text).load()
        t.check("the YAML reads back as the structure checked here", loaded == doc,
                "the loader and the emitter disagree")
    except YamlError as e:
        loaded = None
        t.fail("the YAML reads back as the structure checked here", str(e))
    refused = []
    for sample in ("a: {b: 1}\n", "a: 1\na: 2\n", "a: !Nope x\n", "a:\n\tb: 1\n",
                   "a: b: c\n", "- x\n-y\n"):
        try:
            Loader(sample).load()
            refused.append(sample)
        except YamlError:
            pass
    t.check("the loader refuses what the emitter never writes", not refused, repr(refused))

    bad = check_structure(doc)
    t.check("every resource type, property, reference, parameter and condition checks out",
            not bad, "\n".join(bad[:40]))

    # The checker itself finds mistakes (or it would pass anything).
    broken = json.loads(json.dumps(doc))
    broken["Resources"]["Vpc"]["Properties"]["CidrBlok"] = "10.0.0.0/16"
    broken["Resources"]["AgentRole"]["Properties"]["Description"] = {
        "Fn::GetAtt": ["Vpc", "NoSuchAttribute"]}
    broken["Resources"]["LoadBalancer"]["Properties"]["Name"] = {"Ref": "Missing"}
    broken["Resources"]["AgentTargetGroup"]["Properties"]["Name"] = {"Fn::Sub": "${Nope.Arn}"}
    broken["Resources"]["AgentLaunchTemplate"]["Properties"]["LaunchTemplateData"][
        "MetadataOptions"]["HttpTokenz"] = "required"
    broken["Parameters"]["Unused"] = {"Type": "String"}
    found = check_structure(broken)
    want = ["no property CidrBlok", "no attribute NoSuchAttribute", "Missing is no parameter",
            "Nope is no parameter",
            "unknown key HttpTokenz", "parameter Unused is never used"]
    missed = [w for w in want if not any(w in b for b in found)]
    t.check("the checker reports an unknown property, attribute, reference, nested key and an "
            "unused parameter", not missed, "missed: %s\nfound: %s" % (missed, found))

    res = doc["Resources"]
    azs = sorted(res["PublicSubnet%d" % i]["Properties"]["AvailabilityZone"]["Fn::Select"][0]
                 for i in range(3))
    private = [{"Ref": "PrivateSubnet%d" % i} for i in range(3)]
    asg = res["AgentGroup"]["Properties"]
    t.check("three availability zones: public and private subnets, a NAT gateway each, the "
            "agents in the private ones, the load balancer in the public ones",
            azs == [0, 1, 2] and all("NatGateway%d" % i in res for i in range(3)) and
            asg["VPCZoneIdentifier"] == private and
            res["LoadBalancer"]["Properties"]["Subnets"] ==
            [{"Ref": "PublicSubnet%d" % i} for i in range(3)], azs)

    lt = res["AgentLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    md = lt["MetadataOptions"]
    cmd = res["CoordinatorInstance"]["Properties"]["MetadataOptions"]
    t.check("IMDSv2 only, hop limit 1 by default, instance tags in the metadata (agents and "
            "coordinator)",
            md["HttpTokens"] == "required" and md["HttpPutResponseHopLimit"] ==
            {"Ref": "MetadataHopLimit"} and doc["Parameters"]["MetadataHopLimit"]["Default"] == 1
            and md["InstanceMetadataTags"] == "enabled" and cmd["HttpTokens"] == "required" and
            cmd["HttpPutResponseHopLimit"] == 1, json.dumps([md, cmd]))

    agent_ud = user_data_text(res["AgentLaunchTemplate"], True)
    agent_conf = file_content(agent_ud, "/etc/slipway/agent.conf") or ""
    hooks = asg["LifecycleHookSpecificationList"]
    conf_hook = re.search(r'^lifecycle\.hook_name = "([^"]+)"', agent_conf, re.M)
    conf_group = re.search(r'^lifecycle\.group_name = "([^"]+)"', agent_conf, re.M)
    agent_stmts = [st for _, st in statements(res["AgentRole"])]
    lc_res = [st["Resource"] for st in agent_stmts if "autoscaling:CompleteLifecycleAction" in
              as_list(st["Action"])]
    t.check("the termination lifecycle hook is the agents' (name, group), with the drain "
            "timeout, and the agents may complete it for this group only",
            len(hooks) == 1 and hooks[0]["LifecycleTransition"] ==
            "autoscaling:EC2_INSTANCE_TERMINATING" and conf_hook and
            hooks[0]["LifecycleHookName"] == conf_hook.group(1) and
            hooks[0]["HeartbeatTimeout"] == {"Ref": "DrainTimeoutSeconds"} and conf_group and
            asg["AutoScalingGroupName"] == {"Fn::Sub": conf_group.group(1)} and
            len(lc_res) == 1 and lc_res[0]["Fn::Sub"].endswith(
                "autoScalingGroupName/" + conf_group.group(1)),
            json.dumps([hooks, lc_res]))

    tg = res["AgentTargetGroup"]["Properties"]
    delay = [a["Value"] for a in tg["TargetGroupAttributes"]
             if a["Key"] == "deregistration_delay.timeout_seconds"]
    health = agent_default("proxy.health_path")
    t.check("the load balancer checks the proxy's health path on the traffic port; its "
            "deregistration delay is the one the agents wait out",
            health and tg["HealthCheckPath"] == health and
            tg["HealthCheckPort"] == "traffic-port" and asg["HealthCheckType"] == "ELB" and
            delay == [{"Ref": "DeregistrationDelaySeconds"}] and
            'lifecycle.deregistration_delay = "${DeregistrationDelaySeconds}s"' in agent_conf,
            json.dumps([tg.get("HealthCheckPath"), health, delay]))

    with open(IAM_DOC) as f:
        iam_doc = f.read()
    problems = []
    for role in ("AgentRole", "CoordinatorRole"):
        for _, st in statements(res[role]):
            acts = as_list(st["Action"])
            for a in acts:
                if "*" in a:
                    problems.append(f"{role}: wildcard action {a}")
                if a not in iam_doc:
                    problems.append(f"{role}: {a} is not justified in docs/aws-iam.md")
                if a.startswith("sts:"):
                    problems.append(f"{role}: {a} (GetCallerIdentity needs no permission)")
            if st.get("Effect") != "Allow" or "Sid" not in st:
                problems.append(f"{role}: a statement without Sid or not Allow")
            if "*" in as_list(st["Resource"]) and not set(acts) <= NO_RESOURCE_ACTIONS:
                problems.append(f"{role}: Resource * for {acts}")
    t.check("IAM: no wildcard actions, \"*\" only for actions that take no resource, every "
            "action justified in docs/aws-iam.md", not problems, "\n".join(problems))

    with open(T.AGENT_USER_DATA) as f:
        source = f.read()
    kept = [ln for ln in source.split("\n") if "# EDIT" not in ln and "EDIT-ME" not in ln]
    missing = [ln for ln in kept if T.escape_sub(ln) not in agent_ud]
    size = len(fill(agent_ud, {n: "x" * 20 for n in sub_names(agent_ud)}).encode())
    t.check("the agents' user data is init/cloud-init/agent.yaml with the EDIT lines filled, "
            "under EC2's 16 KB", not missing and size <= 16384,
            f"{size} bytes; missing: {missing[:5]}")

    sample = {"CoordinatorInstance.PrivateIp": "10.40.48.10", "Fleet": "default",
              "LogRetentionDays": 30, "AWS::StackName": "slipway",
              "DeregistrationDelaySeconds": 30, "AWS::AccountId": "123456789012",
              "AgentRole": "slipway-AgentRole-ABCDEF", "AWS::Region": "eu-west-1",
              "AWS::URLSuffix": "amazonaws.com", "CoordinatorUrl":
              "https://slipway.example.com:8443", "CoordinatorDataVolume": "vol-0123"}
    agent_bin = os.path.join(BUILD, "slipway-agent")
    coord_bin = os.path.join(BUILD, "slipway-coordinator")
    if os.access(agent_bin, os.X_OK):
        conf = fill(agent_conf, sample).replace("{{ v1.instance_id }}", "i-0123456789abcdef0")
        conf = conf.replace("{{ v1.region }}", "eu-west-1")
        rc, out = run_check(agent_bin, conf, "SLIPWAY_AGENT_")
        t.check("the agent.conf the user data writes passes slipway-agent --check", rc == 0,
                out + conf)
    else:
        t.ok("the agent.conf the user data writes passes slipway-agent --check # SKIP no "
             "build/slipway-agent")
    coord_ud = user_data_text(res["CoordinatorInstance"], False)
    coord_conf = file_content(coord_ud, "/etc/slipway/coordinator.conf") or ""
    if os.access(coord_bin, os.X_OK):
        with tempfile.TemporaryDirectory() as d:
            conf = fill(coord_conf, sample).replace('"/var/lib/slipway"', json.dumps(d))
            rc, out = run_check(coord_bin, conf, "SLIPWAY_COORDINATOR_")
        t.check("the coordinator.conf the user data writes passes slipway-coordinator --check",
                rc == 0, out + conf)
    else:
        t.ok("the coordinator.conf passes slipway-coordinator --check # SKIP no binary")

    lint = shutil.which("cfn-lint")
    if lint:
        p = subprocess.run([lint, YAML_PATH], capture_output=True, text=True, timeout=600)
        t.check("cfn-lint finds nothing", p.returncode == 0, p.stdout + p.stderr)
    else:
        t.ok("cfn-lint finds nothing # SKIP cfn-lint is not installed (Debian has no package)")
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
