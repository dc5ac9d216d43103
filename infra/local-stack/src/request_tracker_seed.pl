# Seeds a throwaway Request Tracker instance through RT's Perl API (the parts REST 2.0 of RT 5.0
# cannot do: rights, auth tokens, applying custom fields to queues). Run with the instance's
# RT_SITE_CONFIG / RT_SITE_CONFIG_DIR in the environment; reads a JSON array of operations on stdin
# and prints a JSON array with one result per operation. Every operation is idempotent.
#   {"op":"queue","name":Q}                                   → {"id":N}
#   {"op":"user","name":U,"email":E,"password":P?}            → {"id":N}
#   {"op":"grant","user":U,"queue":Q?,"rights":[R...]}        → {} (no queue: system-wide)
#   {"op":"revoke","user":U,"queue":Q?,"rights":[R...]}       → {}
#   {"op":"custom_field","name":F,"queue":Q?,"max_values":N?} → {"id":N} (ticket CF, Freeform;
#                                                                no queue: applied to every queue)
#   {"op":"token","user":U,"description":D?}                  → {"token":"<auth string>"}
use strict;
use warnings;
use lib '/usr/share/request-tracker5/lib';
use RT;
use JSON;

RT::LoadConfig();
RT::Init();

my $ops = decode_json(do { local $/; <STDIN> });
my $system = RT->SystemUser;
my @out;

sub load_user {
    my ($name) = @_;
    my $user = RT::User->new($system);
    $user->Load($name);
    die "no user $name\n" unless $user->Id;
    return $user;
}

sub load_queue_or_system {
    my ($name) = @_;
    return RT->System unless defined $name;
    my $queue = RT::Queue->new($system);
    $queue->Load($name);
    die "no queue $name\n" unless $queue->Id;
    return $queue;
}

for my $op (@$ops) {
    my $kind = $op->{op} // '';
    if ($kind eq 'queue') {
        my $queue = RT::Queue->new($system);
        $queue->Load($op->{name});
        unless ($queue->Id) {
            my ($ok, $msg) = $queue->Create(Name => $op->{name});
            die "create queue $op->{name}: $msg\n" unless $ok;
        }
        push @out, { id => $queue->Id };
    } elsif ($kind eq 'user') {
        my $user = RT::User->new($system);
        $user->Load($op->{name});
        unless ($user->Id) {
            my ($ok, $msg) = $user->Create(
                Name         => $op->{name},
                EmailAddress => $op->{email},
                Privileged   => 1,
            );
            die "create user $op->{name}: $msg\n" unless $ok;
        }
        if (defined $op->{password}) {
            my ($ok, $msg) = $user->SetPassword($op->{password});
            die "set the password of $op->{name}: $msg\n" unless $ok;
        }
        push @out, { id => $user->Id };
    } elsif ($kind eq 'grant' || $kind eq 'revoke') {
        my $principal = load_user($op->{user})->PrincipalObj;
        my $object = load_queue_or_system($op->{queue});
        for my $right (@{ $op->{rights} }) {
            my ($ok, $msg) = $kind eq 'grant'
                ? $principal->GrantRight(Right => $right, Object => $object)
                : $principal->RevokeRight(Right => $right, Object => $object);
            die "$kind $right: $msg\n" unless $ok || $msg =~ /already|not granted|could not find/i;
        }
        push @out, {};
    } elsif ($kind eq 'custom_field') {
        my $cf = RT::CustomField->new($system);
        $cf->LoadByName(Name => $op->{name}, LookupType => RT::Ticket->CustomFieldLookupType);
        unless ($cf->Id) {
            my ($ok, $msg) = $cf->Create(
                Name       => $op->{name},
                Type       => 'Freeform',
                MaxValues  => $op->{max_values} // 0,
                LookupType => RT::Ticket->CustomFieldLookupType,
            );
            die "create custom field $op->{name}: $msg\n" unless $ok;
        }
        my $target = RT::Queue->new($system);
        $target = load_queue_or_system($op->{queue}) if defined $op->{queue};
        my ($ok, $msg) = $cf->AddToObject($target);
        die "apply custom field $op->{name}: $msg\n" unless $ok || $msg =~ /already/i;
        push @out, { id => $cf->Id };
    } elsif ($kind eq 'token') {
        my $user = load_user($op->{user});
        my $token = RT::AuthToken->new($system);
        my ($id, $msg, $auth) = $token->Create(
            Owner       => $user->Id,
            Description => $op->{description} // 'mailbridge',
        );
        die "create a token for $op->{user}: $msg\n" unless $id;
        push @out, { token => $auth };
    } else {
        die "unknown seed operation '$kind'\n";
    }
}
print encode_json(\@out), "\n";
