//! The EC2 actions ipmgmt calls, by name.

/// Every EC2 action ipmgmt calls (the manager, the controller and `ipmgmt check`). The calls name their action here, the error lines
/// print it, and the IAM policy test checks `deploy/iam-policy.json` against `ALL`:
/// a new action is a variant, its name, and its entry in `ALL`, side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    DescribeInstances,
    DescribeInstanceTypes,
    DescribeNetworkInterfaces,
    DescribeSubnets,
    DescribeVpcs,
    GetSubnetCidrReservations,
    CreateSubnetCidrReservation,
    CreateNetworkInterface,
    AttachNetworkInterface,
    ModifyNetworkInterfaceAttribute,
    DeleteNetworkInterface,
    AssignPrivateIpAddresses,
    UnassignPrivateIpAddresses,
    AssignIpv6Addresses,
    UnassignIpv6Addresses,
    DescribeAddresses,
    AssociateAddress,
    DisassociateAddress,
    DescribeRouteTables,
    CreateRoute,
    ReplaceRoute,
}

impl Action {
    pub const ALL: [Action; 21] = [
        Action::DescribeInstances,
        Action::DescribeInstanceTypes,
        Action::DescribeNetworkInterfaces,
        Action::DescribeSubnets,
        Action::DescribeVpcs,
        Action::GetSubnetCidrReservations,
        Action::CreateSubnetCidrReservation,
        Action::CreateNetworkInterface,
        Action::AttachNetworkInterface,
        Action::ModifyNetworkInterfaceAttribute,
        Action::DeleteNetworkInterface,
        Action::AssignPrivateIpAddresses,
        Action::UnassignPrivateIpAddresses,
        Action::AssignIpv6Addresses,
        Action::UnassignIpv6Addresses,
        Action::DescribeAddresses,
        Action::AssociateAddress,
        Action::DisassociateAddress,
        Action::DescribeRouteTables,
        Action::CreateRoute,
        Action::ReplaceRoute,
    ];

    /// The API's name of the action, as IAM policies and error lines spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Action::DescribeInstances => "DescribeInstances",
            Action::DescribeInstanceTypes => "DescribeInstanceTypes",
            Action::DescribeNetworkInterfaces => "DescribeNetworkInterfaces",
            Action::DescribeSubnets => "DescribeSubnets",
            Action::DescribeVpcs => "DescribeVpcs",
            Action::GetSubnetCidrReservations => "GetSubnetCidrReservations",
            Action::CreateSubnetCidrReservation => "CreateSubnetCidrReservation",
            Action::CreateNetworkInterface => "CreateNetworkInterface",
            Action::AttachNetworkInterface => "AttachNetworkInterface",
            Action::ModifyNetworkInterfaceAttribute => "ModifyNetworkInterfaceAttribute",
            Action::DeleteNetworkInterface => "DeleteNetworkInterface",
            Action::AssignPrivateIpAddresses => "AssignPrivateIpAddresses",
            Action::UnassignPrivateIpAddresses => "UnassignPrivateIpAddresses",
            Action::AssignIpv6Addresses => "AssignIpv6Addresses",
            Action::UnassignIpv6Addresses => "UnassignIpv6Addresses",
            Action::DescribeAddresses => "DescribeAddresses",
            Action::AssociateAddress => "AssociateAddress",
            Action::DisassociateAddress => "DisassociateAddress",
            Action::DescribeRouteTables => "DescribeRouteTables",
            Action::CreateRoute => "CreateRoute",
            Action::ReplaceRoute => "ReplaceRoute",
        }
    }
}

impl Action {
    /// Every action the IP manager calls; `deploy/iam-policy.json` grants exactly
    /// these (checked by a test), and `ipmgmt check` tries each with the manager's role.
    pub const MANAGER: [Action; 8] = [
        Action::DescribeInstances,
        Action::DescribeNetworkInterfaces,
        Action::DescribeSubnets,
        Action::DescribeVpcs,
        Action::AssignPrivateIpAddresses,
        Action::UnassignPrivateIpAddresses,
        Action::AssignIpv6Addresses,
        Action::UnassignIpv6Addresses,
    ];

    /// What the IP manager calls beyond `MANAGER` for a pod with floating addresses, an
    /// Elastic IP or route tables; `deploy/floating-iam-policy.json` grants exactly
    /// these (checked by a test).
    pub const FLOATING: [Action; 6] = [
        Action::DescribeAddresses,
        Action::AssociateAddress,
        Action::DisassociateAddress,
        Action::DescribeRouteTables,
        Action::CreateRoute,
        Action::ReplaceRoute,
    ];

    /// Every action the controller calls; `deploy/reclaimer-iam-policy.json` grants
    /// exactly these (checked by a test). Those with an `opt_in` only when it is on.
    pub const CONTROLLER: [Action; 12] = [
        Action::DescribeNetworkInterfaces,
        Action::DescribeSubnets,
        Action::GetSubnetCidrReservations,
        Action::CreateSubnetCidrReservation,
        Action::CreateNetworkInterface,
        Action::AttachNetworkInterface,
        Action::ModifyNetworkInterfaceAttribute,
        Action::DeleteNetworkInterface,
        Action::UnassignPrivateIpAddresses,
        Action::UnassignIpv6Addresses,
        Action::AssignPrivateIpAddresses,
        Action::AssignIpv6Addresses,
    ];

    /// The four actions the policy allows only on ENIs tagged no_manage.
    pub const fn changes_an_eni(self) -> bool {
        match self {
            Action::DescribeInstances
            | Action::DescribeInstanceTypes
            | Action::DescribeNetworkInterfaces
            | Action::DescribeSubnets
            | Action::DescribeVpcs
            | Action::GetSubnetCidrReservations
            | Action::CreateSubnetCidrReservation
            | Action::CreateNetworkInterface
            | Action::AttachNetworkInterface
            | Action::ModifyNetworkInterfaceAttribute
            | Action::DeleteNetworkInterface
            | Action::DescribeAddresses
            | Action::AssociateAddress
            | Action::DisassociateAddress
            | Action::DescribeRouteTables
            | Action::CreateRoute
            | Action::ReplaceRoute => false,
            Action::AssignPrivateIpAddresses
            | Action::UnassignPrivateIpAddresses
            | Action::AssignIpv6Addresses
            | Action::UnassignIpv6Addresses => true,
        }
    }
}

impl Action {
    /// The controller's flag that turns on the only use of an action that writes to
    /// EC2 beyond the ENIs' addresses; such actions are granted by a policy of their
    /// own (`Action::opt_in_policy`), attached only with the option.
    pub const fn opt_in(self) -> Option<&'static str> {
        match self {
            Action::CreateSubnetCidrReservation => Some("--guard-reserve-ranges"),
            Action::CreateNetworkInterface
            | Action::AttachNetworkInterface
            | Action::ModifyNetworkInterfaceAttribute
            | Action::DeleteNetworkInterface => Some("--readiness-attach"),
            _ => None,
        }
    }

    /// The policy file that grants an opt-in action.
    pub const fn opt_in_policy(self) -> Option<&'static str> {
        match self {
            Action::CreateSubnetCidrReservation => Some("deploy/reclaimer-reserve-iam-policy.json"),
            Action::CreateNetworkInterface
            | Action::AttachNetworkInterface
            | Action::ModifyNetworkInterfaceAttribute
            | Action::DeleteNetworkInterface => Some("deploy/reclaimer-attach-iam-policy.json"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
